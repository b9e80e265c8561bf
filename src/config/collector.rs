//! Every problem of one load, each with its key, its file:line:column and a fix, so an
//! operator corrects a file in one pass.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use crate::units::{parse_duration, parse_size};

/// One configuration problem: which key, where, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Dotted key, e.g. `control_plane.url`, or `-` for file-level problems.
    pub key: String,
    /// File and 1-based line/column when the problem is in the file.
    pub location: Option<(PathBuf, u64, u64)>,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((p, line, col)) = &self.location {
            write!(f, "{}:{line}:{col}: ", p.display())?;
        }
        write!(f, "{}: {}", self.key, self.problem)?;
        if !self.fix.is_empty() {
            write!(f, "\n    fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// Every problem found in one load.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

pub(super) struct Collector<'a> {
    pub(super) file: Option<&'a Path>,
    pub(super) errors: Vec<ConfigError>,
}

impl Collector<'_> {
    pub(super) fn at<T>(
        &mut self,
        key: &str,
        spanned: Option<&Spanned<T>>,
        problem: String,
        fix: &str,
    ) {
        let location = match (self.file, spanned) {
            (Some(p), Some(s)) => {
                Some((p.to_path_buf(), s.referenced.line(), s.referenced.column()))
            }
            _ => None,
        };
        self.errors.push(ConfigError {
            key: key.to_string(),
            location,
            problem,
            fix: fix.to_string(),
        });
    }

    /// The duration at `key`, `default` when absent; an unparsable one is reported (with
    /// `fix`) and replaced by `default` so every other error is still collected.
    pub(super) fn duration(
        &mut self,
        key: &str,
        sp: Option<&Spanned<String>>,
        default: Duration,
        fix: &str,
    ) -> Duration {
        self.duration_min(key, sp, default, Duration::ZERO, fix)
    }

    /// A duration of at least `min` at `key`; `fix` says how to write one.
    pub(super) fn duration_min(
        &mut self,
        key: &str,
        sp: Option<&Spanned<String>>,
        default: Duration,
        min: Duration,
        fix: &str,
    ) -> Duration {
        match sp.map(|sp| (sp, parse_duration(&sp.value))) {
            None => default,
            Some((_, Ok(d))) if d >= min => d,
            Some((sp, Ok(_))) => {
                let problem = format!(
                    "{:?} is shorter than the minimum {}",
                    sp.value,
                    humantime::format_duration(min)
                );
                self.at(key, Some(sp), problem, "use a longer duration");
                default
            }
            Some((sp, Err(p))) => {
                self.at(key, Some(sp), p, fix);
                default
            }
        }
    }

    /// A size of at least `min` bytes at `key`; `fix` says how to write one.
    pub(super) fn size_min(
        &mut self,
        key: &str,
        sp: Option<&Spanned<String>>,
        default: u64,
        min: u64,
        fix: &str,
    ) -> u64 {
        match sp.map(|sp| (sp, parse_size(&sp.value))) {
            None => default,
            Some((_, Ok(n))) if n >= min => n,
            Some((sp, Ok(_))) => {
                let problem = format!("{:?} is below the minimum of {min} bytes", sp.value);
                self.at(key, Some(sp), problem, "use a larger size");
                default
            }
            Some((sp, Err(p))) => {
                self.at(key, Some(sp), p, fix);
                default
            }
        }
    }
}

/// serde-saphyr's message without its redundant "error: line N column M:" prefix, with the
/// source snippet kept and pointed at the real file.
pub(super) fn yaml_problem(rendered: &str, path: &Path) -> String {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.split_once(": ") {
        Some((pos, rest)) if pos.starts_with("line ") => rest,
        _ => first,
    };
    let snippet: Vec<String> = lines
        .map(|l| l.replace("<input>", &path.display().to_string()))
        .collect();
    if snippet.is_empty() {
        first.to_string()
    } else {
        format!("{first}\n{}", snippet.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::overrides::Overrides;
    use super::super::test_support::{errors, one_error};
    use super::*;

    #[test]
    fn yaml_level_errors_have_positions() {
        for (yaml, line, needle) in [
            ("worker_id: w\nworker_id: v\n", 2, "duplicate"),
            ("worker_id: w\ncleanup: yes\n", 2, "boolean"),
            ("worker_id: w\nmax_concurrent_tasks: -1\n", 2, "u32"),
            (
                "worker_id: w\nbackend:\n  docker:\n    pull_policy: sometimes\n",
                4,
                "if-not-present",
            ),
            ("worker_id: w\nlog:\n  format: xml\n", 3, "json"),
        ] {
            let e = one_error(yaml);
            assert_eq!(e.location.as_ref().map(|l| l.1), Some(line), "{yaml}: {e}");
            assert!(e.problem.contains(needle), "{yaml}: {}", e.problem);
        }
    }

    #[test]
    fn every_semantic_error_names_key_line_and_fix() {
        let cases: [(&str, &str, u64); 12] = [
            ("worker_id: warp-1\n", "worker_id", 1),
            ("worker_id: WARPED\n", "worker_id", 1),
            ("worker_id: 'has space'\n", "worker_id", 1),
            (
                "worker_id: w\ncontrol_plane:\n  url: ws://example.com/ws\n",
                "control_plane.url",
                3,
            ),
            (
                "worker_id: w\ncontrol_plane:\n  url: https://example.com/ws\n",
                "control_plane.url",
                3,
            ),
            (
                "worker_id: w\ncontrol_plane:\n  url: '::nope'\n",
                "control_plane.url",
                3,
            ),
            (
                "worker_id: w\ncontrol_plane:\n  heartbeat_interval: 30\n",
                "control_plane.heartbeat_interval",
                3,
            ),
            (
                "worker_id: w\ncontrol_plane:\n  max_message_size: 16MB\n",
                "control_plane.max_message_size",
                3,
            ),
            (
                "worker_id: w\nbackend:\n  docker:\n    default_image: 'Not An Image'\n",
                "backend.docker.default_image",
                4,
            ),
            (
                "worker_id: w\nbackend:\n  docker:\n    volumes: ['rel/dir:/x']\n",
                "backend.docker.volumes",
                4,
            ),
            (
                "worker_id: w\nbackend:\n  docker:\n    stop_grace_period: soon\n",
                "backend.docker.stop_grace_period",
                4,
            ),
            ("worker_id: w\nstate_dir: relative/dir\n", "state_dir", 2),
        ];
        for (yaml, key, line) in cases {
            let e = one_error(yaml);
            assert_eq!(e.key, key, "{yaml}");
            assert_eq!(e.location.as_ref().map(|l| l.1), Some(line), "{yaml}: {e}");
            assert!(!e.fix.is_empty(), "{yaml}");
        }
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let e = errors(
            "worker_id: warp\ncontrol_plane:\n  heartbeat_interval: x\nlog:\n  level: 'not a level!!'\n",
            &Overrides::default(),
        );
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "worker_id",
                "control_plane.api_key_file",
                "control_plane.heartbeat_interval",
                "log.level"
            ]
        );
    }

    #[test]
    fn sizes_accept_only_bytes_and_iec_units() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("16MB").is_err());
        assert!(parse_size("10g").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn durations_refuse_bare_numbers() {
        assert_eq!(parse_duration("1h15m"), Ok(Duration::from_secs(4500)));
        assert!(parse_duration("90").is_err());
    }
}
