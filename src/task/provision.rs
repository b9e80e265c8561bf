//! Provisioning inside the task's container: clone the environment's repositories, run its
//! setup commands, then release the task's own command.
//!
//! The container starts under a tiny `/bin/sh` holder that waits for `SIGUSR1` and then
//! `exec`s the real command (the image's entrypoint plus the task's `Cmd`), so every phase runs
//! in the very container the task will use (same filesystem, user, limits and network) while
//! the task itself has not started. Each phase runs through `docker exec`: exact exit codes,
//! and its output goes into the transcript (redacted) between `system` lines that announce it
//! and its duration.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::backend::{BackendError, InPlace};
use crate::failure::{Failure, FailureReason};
use crate::protocol::Stream;
use crate::spec::environment::{Environment, Repo, WORKSPACE, repo_dir};
use crate::transcript::Redactor;
use crate::transcript::spool::{SharedSpool, append_retrying, lock};

pub use crate::spec::holder::{HOLD_SCRIPT, RELEASE_SIGNAL, held};

/// What a step is for (decides the failure reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A `git` command of a repository clone.
    Clone,
    /// A setup command.
    Setup,
}

/// One command run inside the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Clone or setup.
    pub kind: StepKind,
    /// Announced before it runs (secrets in URLs already masked).
    pub title: String,
    /// argv (never through a shell for clones: URLs and refs are not interpreted).
    pub argv: Vec<String>,
    /// Working directory.
    pub workdir: String,
}

impl Step {
    /// The step as a backend runs it before the task's command (an init container).
    pub fn as_init(&self) -> crate::spec::InitStep {
        crate::spec::InitStep {
            title: self.title.clone(),
            argv: self.argv.clone(),
            workdir: self.workdir.clone(),
            reason: match self.kind {
                StepKind::Clone => FailureReason::WorkspaceSetup,
                StepKind::Setup => FailureReason::SetupCommand,
            },
        }
    }
}

/// Masks the password of a `scheme://user:password@host/…` URL for display.
pub fn display_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_string(),
    }
}

fn clone_steps(r: &Repo) -> Result<Vec<Step>, String> {
    let dir = repo_dir(r)?;
    let shown = display_url(r.url.trim());
    let at = r
        .git_ref
        .as_deref()
        .map(str::trim)
        .filter(|g| !g.is_empty());
    let mut steps = vec![Step {
        kind: StepKind::Clone,
        title: format!(
            "clone {shown} into {dir}{}",
            at.map(|g| format!(" at {g}")).unwrap_or_default()
        ),
        argv: ["git", "clone", "--", r.url.trim(), &dir]
            .map(str::to_string)
            .to_vec(),
        workdir: WORKSPACE.to_string(),
    }];
    if let Some(g) = at {
        steps.push(Step {
            kind: StepKind::Clone,
            title: format!("check out {g} in {dir}"),
            argv: ["git", "-C", &dir, "checkout", "--quiet", g, "--"]
                .map(str::to_string)
                .to_vec(),
            workdir: WORKSPACE.to_string(),
        });
    }
    Ok(steps)
}

/// Every step of an environment, in order: each repository (clone, then checkout of its ref),
/// then each setup command (`/bin/sh -c` in `workdir`).
pub fn steps(env: &Environment, workdir: &str) -> Result<Vec<Step>, String> {
    let mut out = Vec::new();
    for r in &env.repos {
        out.extend(clone_steps(r)?);
    }
    let n = env.setup.len();
    for (i, c) in env.setup.iter().enumerate() {
        out.push(Step {
            kind: StepKind::Setup,
            title: format!("setup {}/{n}: {c}", i + 1),
            argv: vec!["/bin/sh".into(), "-c".into(), c.clone()],
            workdir: workdir.to_string(),
        });
    }
    Ok(out)
}

/// The failure for a step that exited with `code` (pure; phrased for the user).
pub fn step_failed(step: &Step, code: i64) -> Failure {
    let hint = match code {
        126 | 127 if step.kind == StepKind::Clone => {
            " (the image has no usable `git`: add git to the environment's image)"
        }
        126 | 127 => " (command not found or not executable in the image)",
        _ => "",
    };
    match step.kind {
        StepKind::Clone => Failure {
            reason: FailureReason::WorkspaceSetup,
            detail: format!(
                "{} failed with git exit status {code}{hint}; git's message is in the transcript",
                step.title
            ),
            exit_code: Some(code),
            details: None,
        },
        StepKind::Setup => Failure {
            reason: FailureReason::SetupCommand,
            detail: format!(
                "{} exited with status {code}{hint}; its output is in the transcript",
                step.title
            ),
            exit_code: Some(code),
            details: None,
        },
    }
}

/// Writes a `system` line, redacted like task output.
async fn announce(spool: &SharedSpool, secrets: &[Vec<u8>], text: &str) {
    let mut r = Redactor::new(secrets.iter().cloned());
    let mut line = r.feed(format!("[berth] {text}\n").as_bytes());
    line.extend(r.finish());
    let resume = lock(spool).last_resume();
    append_retrying(spool, Stream::System, &line, resume).await;
}

/// Runs one step; its output goes to the spool. Returns its exit status.
async fn run_step(
    runtime: &dyn InPlace,
    container: &str,
    step: &Step,
    spool: &SharedSpool,
    secrets: &[Vec<u8>],
) -> Result<i64, BackendError> {
    let env = vec!["GIT_TERMINAL_PROMPT=0".to_string()];
    let mut run = runtime
        .exec(container, step.argv.clone(), Some(&step.workdir), env)
        .await?;
    let mut redactors = [
        Redactor::new(secrets.iter().cloned()),
        Redactor::new(secrets.iter().cloned()),
    ];
    let slot = |s: Stream| usize::from(s == Stream::Stderr);
    while let Some(item) = run.output.next().await {
        let (stream, bytes) = item?;
        let out = redactors[slot(stream)].feed(&bytes);
        if !out.is_empty() {
            let resume = lock(spool).last_resume();
            append_retrying(spool, stream, &out, resume).await;
        }
    }
    for stream in [Stream::Stdout, Stream::Stderr] {
        let rest = redactors[slot(stream)].finish();
        if !rest.is_empty() {
            let resume = lock(spool).last_resume();
            append_retrying(spool, stream, &rest, resume).await;
        }
    }
    // The output stream ends a moment before the engine records the exit code.
    for _ in 0..100 {
        if let Some(code) = runtime.exec_exit_code(&run.id).await? {
            return Ok(code);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BackendError::Api {
        op: "exec inspect",
        reason: format!("`{}` did not report an exit status", step.title),
    })
}

/// Runs every step in order, then releases the task's command. Stops at the first failure.
/// Cancellation is the caller's (drop this future): the container is then stopped and removed.
/// `on_stage(kind, began, failed)` is told each time a stage (consecutive steps of one kind)
/// ends; a stage a cancellation cuts short never ends.
pub async fn provision(
    runtime: &dyn InPlace,
    container: &str,
    steps: &[Step],
    spool: &SharedSpool,
    secrets: &[Vec<u8>],
    mut on_stage: impl FnMut(StepKind, DateTime<Utc>, bool),
) -> Result<(), Failure> {
    let all = Instant::now();
    // The stage under way (consecutive steps of one kind) and when it began.
    let mut stage: Option<(StepKind, DateTime<Utc>)> = None;
    for step in steps {
        if stage.is_none_or(|(k, _)| k != step.kind) {
            if let Some((k, at)) = stage {
                on_stage(k, at, false);
            }
            stage = Some((step.kind, Utc::now()));
        }
        announce(spool, secrets, &step.title).await;
        let t = Instant::now();
        let ran = match run_step(runtime, container, step, spool, secrets).await {
            Ok(0) => Ok(()),
            // The failure itself is the transcript's closing line (written by the task).
            Ok(code) => Err(step_failed(step, code)),
            Err(e) => Err(Failure {
                reason: match step.kind {
                    StepKind::Clone => FailureReason::WorkspaceSetup,
                    StepKind::Setup => FailureReason::SetupCommand,
                },
                detail: format!("{} could not be run: {e}", step.title),
                exit_code: None,
                details: None,
            }),
        };
        if let Err(f) = ran {
            on_stage(step.kind, stage.map_or_else(Utc::now, |(_, at)| at), true);
            return Err(f);
        }
        announce(
            spool,
            secrets,
            &format!("{} finished in {} ms", step.title, t.elapsed().as_millis()),
        )
        .await;
    }
    if let Some((k, at)) = stage {
        on_stage(k, at, false);
    }
    announce(
        spool,
        secrets,
        &format!(
            "provisioning finished in {} ms; starting the task",
            all.elapsed().as_millis()
        ),
    )
    .await;
    runtime.release(container).await.map_err(|e| Failure {
        reason: FailureReason::ContainerStart,
        detail: format!("cannot start the task's command after provisioning: {e}"),
        exit_code: None,
        details: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(url: &str, r: Option<&str>, path: Option<&str>) -> Repo {
        Repo {
            url: url.into(),
            git_ref: r.map(str::to_string),
            path: path.map(str::to_string),
        }
    }

    #[test]
    fn steps_clone_each_repository_then_run_setup_in_order() {
        let env = Environment {
            repos: vec![
                repo("https://h/org/app.git", Some("v1.2"), None),
                repo("/srv/lib.git", None, Some("deps/lib")),
            ],
            setup: vec!["make deps".into(), "echo ok".into()],
            ..Environment::default()
        };
        let s = steps(&env, "/workspace/app").unwrap();
        let argv: Vec<Vec<&str>> = s
            .iter()
            .map(|s| s.argv.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            argv,
            vec![
                vec![
                    "git",
                    "clone",
                    "--",
                    "https://h/org/app.git",
                    "/workspace/app"
                ],
                vec![
                    "git",
                    "-C",
                    "/workspace/app",
                    "checkout",
                    "--quiet",
                    "v1.2",
                    "--"
                ],
                vec!["git", "clone", "--", "/srv/lib.git", "/workspace/deps/lib"],
                vec!["/bin/sh", "-c", "make deps"],
                vec!["/bin/sh", "-c", "echo ok"],
            ]
        );
        assert_eq!(
            s[0].title,
            "clone https://h/org/app.git into /workspace/app at v1.2"
        );
        assert_eq!(s[3].title, "setup 1/2: make deps");
        assert_eq!(s[3].workdir, "/workspace/app");
        assert_eq!(s[0].workdir, WORKSPACE);
        assert_eq!(
            s.iter().map(|s| s.kind).collect::<Vec<_>>(),
            [
                StepKind::Clone,
                StepKind::Clone,
                StepKind::Clone,
                StepKind::Setup,
                StepKind::Setup
            ]
        );
        let bad = Environment {
            repos: vec![repo("https://h/x", None, Some("../out"))],
            ..Environment::default()
        };
        assert!(steps(&bad, "/workspace").is_err());
    }

    #[test]
    fn a_url_password_never_reaches_the_transcript_line() {
        assert_eq!(
            display_url("https://bot:s3cr3t@git.example.com/org/app.git"),
            "https://bot:***@git.example.com/org/app.git"
        );
        assert_eq!(
            display_url("https://ghp_token@github.com/o/r"),
            "https://***@github.com/o/r"
        );
        assert_eq!(
            display_url("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
        assert_eq!(display_url("https://h/a@b"), "https://h/a@b");
        let s = steps(
            &Environment {
                repos: vec![repo("https://u:pw@h/r.git", None, None)],
                ..Environment::default()
            },
            "/workspace",
        )
        .unwrap_or_default();
        assert!(!s[0].title.contains("pw"), "{}", s[0].title);
        assert_eq!(
            s[0].argv[3], "https://u:pw@h/r.git",
            "git still gets the real URL"
        );
    }

    #[test]
    fn failures_name_the_step_the_status_and_the_reason() {
        let setup = Step {
            kind: StepKind::Setup,
            title: "setup 2/3: make deps".into(),
            argv: vec![],
            workdir: "/workspace".into(),
        };
        let f = step_failed(&setup, 2);
        assert_eq!(f.reason, FailureReason::SetupCommand);
        assert_eq!(f.exit_code, Some(2));
        assert!(
            f.detail
                .starts_with("setup 2/3: make deps exited with status 2"),
            "{}",
            f.detail
        );
        let clone = Step {
            kind: StepKind::Clone,
            title: "clone x into /workspace/x".into(),
            ..setup
        };
        let f = step_failed(&clone, 127);
        assert_eq!(f.reason, FailureReason::WorkspaceSetup);
        assert!(f.detail.contains("add git"), "{}", f.detail);
        let f = step_failed(&clone, 128);
        assert!(f.detail.contains("git exit status 128"), "{}", f.detail);
    }
}
