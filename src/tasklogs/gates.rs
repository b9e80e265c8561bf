//! When berth exports (PROTOCOL §8.3): the operator allows it, the server asked for logs, the
//! run carries both tokens, and both URLs are acceptable. A pure decision: the first failed
//! gate is named (never with a value); a missing `telemetry_collection` is not a failure but
//! the ordinary case, and changes nothing.

use std::collections::BTreeMap;

use crate::protocol::TelemetryCollection;
use crate::secret::Secret;

/// A gate that refused export. Its message names the gate and never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Gate {
    #[error("task_logs.enabled is false in the worker's configuration")]
    OperatorDisabled,
    #[error("telemetry_collection.logging_enabled is false")]
    LoggingDisabled,
    #[error("env_vars has no non-empty WARP_API_KEY")]
    NoApiKey,
    #[error("env_vars has no non-empty WARP_WORKLOAD_TOKEN")]
    NoWorkloadToken,
    #[error("telemetry_collection.endpoint {0}")]
    Endpoint(UrlProblem),
    #[error("server_root_url {0}")]
    ServerRoot(UrlProblem),
}

impl Gate {
    /// The gate's metric label.
    pub fn refusal(&self) -> crate::metrics::Refusal {
        use crate::metrics::Refusal;
        match self {
            Gate::OperatorDisabled => Refusal::OperatorDisabled,
            Gate::LoggingDisabled => Refusal::LoggingDisabled,
            Gate::NoApiKey => Refusal::NoApiKey,
            Gate::NoWorkloadToken => Refusal::NoWorkloadToken,
            Gate::Endpoint(_) => Refusal::Endpoint,
            Gate::ServerRoot(_) => Refusal::ServerRoot,
        }
    }
}

/// Why a URL is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    #[error("is not an absolute URL")]
    NotAbsolute,
    #[error("is not http or https")]
    Scheme,
    #[error("has no host")]
    NoHost,
    #[error("carries user info")]
    UserInfo,
    #[error("carries a query")]
    Query,
    #[error("carries a fragment")]
    Fragment,
    #[error("is plain http to a host that is not loopback (set task_logs.allow_insecure)")]
    Insecure,
}

/// What the gates look at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// `task_logs.enabled`.
    pub enabled: bool,
    /// `task_logs.allow_insecure`.
    pub allow_insecure: bool,
    pub telemetry: Option<&'a TelemetryCollection>,
    pub env_vars: Option<&'a BTreeMap<String, String>>,
    pub server_root_url: &'a str,
}

/// Everything an export needs, once every gate passed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `{endpoint}/v1/logs`.
    pub logs_url: url::Url,
    /// `{server_root_url}/graphql/v2`.
    pub identity_url: url::Url,
    pub api_key: Secret,
    pub workload_token: Secret,
}

/// The decision for one execution.
#[derive(Debug, Clone)]
pub enum Decision {
    /// No `telemetry_collection`: nothing about the run changes, nothing is logged.
    Absent,
    /// A gate failed: one warning naming it, nothing exported, no identity request.
    Refused(Gate),
    Export(Box<Plan>),
}

/// Applies the gates in the order of PROTOCOL §8.3.
pub fn decide(i: Inputs<'_>) -> Decision {
    let Some(t) = i.telemetry else {
        return Decision::Absent;
    };
    match plan(i, t) {
        Ok(p) => Decision::Export(Box::new(p)),
        Err(g) => Decision::Refused(g),
    }
}

fn plan(i: Inputs<'_>, t: &TelemetryCollection) -> Result<Plan, Gate> {
    if !i.enabled {
        return Err(Gate::OperatorDisabled);
    }
    if !t.logging_enabled {
        return Err(Gate::LoggingDisabled);
    }
    let env = |k: &str| {
        i.env_vars
            .and_then(|e| e.get(k))
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.as_str()))
    };
    let api_key = env("WARP_API_KEY").ok_or(Gate::NoApiKey)?;
    let workload_token = env("WARP_WORKLOAD_TOKEN").ok_or(Gate::NoWorkloadToken)?;
    let endpoint = check_url(&t.endpoint, i.allow_insecure).map_err(Gate::Endpoint)?;
    let root = check_url(i.server_root_url, i.allow_insecure).map_err(Gate::ServerRoot)?;
    Ok(Plan {
        logs_url: under(endpoint, "v1/logs"),
        identity_url: under(root, "graphql/v2"),
        api_key,
        workload_token,
    })
}

/// An absolute http(s) URL with a host and no user info, query or fragment; plain http only
/// to a loopback host unless `allow_insecure`.
pub fn check_url(text: &str, allow_insecure: bool) -> Result<url::Url, UrlProblem> {
    let u = url::Url::parse(text).map_err(|_| UrlProblem::NotAbsolute)?;
    let checks: [(bool, UrlProblem); 5] = [
        (!matches!(u.scheme(), "http" | "https"), UrlProblem::Scheme),
        (u.host_str().is_none_or(str::is_empty), UrlProblem::NoHost),
        (
            !u.username().is_empty() || u.password().is_some(),
            UrlProblem::UserInfo,
        ),
        (u.query().is_some(), UrlProblem::Query),
        (u.fragment().is_some(), UrlProblem::Fragment),
    ];
    if let Some((_, p)) = checks.iter().find(|(failed, _)| *failed) {
        return Err(*p);
    }
    if u.scheme() == "http" && !allow_insecure && !is_loopback(&u) {
        return Err(UrlProblem::Insecure);
    }
    Ok(u)
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `base` without its trailing `/`, then `/` and `path`.
fn under(mut base: url::Url, path: &str) -> url::Url {
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    base.set_path(&joined);
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc(endpoint: &str, logging: bool) -> TelemetryCollection {
        TelemetryCollection {
            endpoint: endpoint.into(),
            logging_enabled: logging,
            tracing_enabled: false,
            bootstrap_token: None,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const TOKENS: &[(&str, &str)] = &[("WARP_API_KEY", "k"), ("WARP_WORKLOAD_TOKEN", "w")];

    fn run(
        enabled: bool,
        t: Option<&TelemetryCollection>,
        e: &[(&str, &str)],
        root: &str,
    ) -> Decision {
        let e = env(e);
        decide(Inputs {
            enabled,
            allow_insecure: false,
            telemetry: t,
            env_vars: Some(&e),
            server_root_url: root,
        })
    }

    fn refused(d: Decision) -> Option<Gate> {
        match d {
            Decision::Refused(g) => Some(g),
            _ => None,
        }
    }

    #[test]
    fn absent_is_not_a_failure() {
        assert!(matches!(
            run(true, None, TOKENS, "https://r"),
            Decision::Absent
        ));
        // Even with export switched off: nothing to warn about.
        assert!(matches!(run(false, None, &[], ""), Decision::Absent));
    }

    #[test]
    fn each_gate_names_itself() {
        let ok = tc("https://c.example/otlp", true);
        let root = "https://app.example";
        let cases: Vec<(Decision, Gate)> = vec![
            (run(false, Some(&ok), TOKENS, root), Gate::OperatorDisabled),
            (
                run(
                    true,
                    Some(&TelemetryCollection {
                        tracing_enabled: true,
                        ..tc("https://c", false)
                    }),
                    TOKENS,
                    root,
                ),
                Gate::LoggingDisabled,
            ),
            (
                run(true, Some(&ok), &[("WARP_WORKLOAD_TOKEN", "w")], root),
                Gate::NoApiKey,
            ),
            (
                run(
                    true,
                    Some(&ok),
                    &[("WARP_API_KEY", ""), ("WARP_WORKLOAD_TOKEN", "w")],
                    root,
                ),
                Gate::NoApiKey,
            ),
            (
                run(true, Some(&ok), &[("WARP_API_KEY", "k")], root),
                Gate::NoWorkloadToken,
            ),
            (
                run(
                    true,
                    Some(&ok),
                    &[("WARP_API_KEY", "k"), ("WARP_WORKLOAD_TOKEN", "")],
                    root,
                ),
                Gate::NoWorkloadToken,
            ),
            (
                run(true, Some(&tc("c.example/otlp", true)), TOKENS, root),
                Gate::Endpoint(UrlProblem::NotAbsolute),
            ),
            (
                run(true, Some(&ok), TOKENS, ""),
                Gate::ServerRoot(UrlProblem::NotAbsolute),
            ),
            (
                run(true, Some(&ok), TOKENS, "ftp://app"),
                Gate::ServerRoot(UrlProblem::Scheme),
            ),
        ];
        for (d, want) in cases {
            assert_eq!(refused(d), Some(want));
        }
    }

    #[test]
    fn gate_messages_name_the_gate_and_carry_no_value() {
        let msgs = [
            Gate::OperatorDisabled.to_string(),
            Gate::NoApiKey.to_string(),
            Gate::NoWorkloadToken.to_string(),
            Gate::Endpoint(UrlProblem::Query).to_string(),
        ];
        assert!(msgs[0].contains("task_logs.enabled"));
        assert!(msgs[1].contains("WARP_API_KEY"));
        assert!(msgs[2].contains("WARP_WORKLOAD_TOKEN"));
        assert_eq!(msgs[3], "telemetry_collection.endpoint carries a query");
    }

    #[test]
    fn urls_are_checked_exactly() {
        let cases: &[(&str, bool, Result<(), UrlProblem>)] = &[
            ("https://c.example", false, Ok(())),
            ("https://c.example:4318/a/b/", false, Ok(())),
            ("http://127.0.0.1:4318", false, Ok(())),
            ("http://localhost:4318", false, Ok(())),
            ("http://[::1]:4318", false, Ok(())),
            ("http://c.example", false, Err(UrlProblem::Insecure)),
            ("http://c.example", true, Ok(())),
            ("relative/path", false, Err(UrlProblem::NotAbsolute)),
            ("", false, Err(UrlProblem::NotAbsolute)),
            ("ws://c.example", false, Err(UrlProblem::Scheme)),
            ("file:///etc/passwd", false, Err(UrlProblem::Scheme)),
            ("https://user@c.example", false, Err(UrlProblem::UserInfo)),
            ("https://u:p@c.example", false, Err(UrlProblem::UserInfo)),
            ("https://:p@c.example", false, Err(UrlProblem::UserInfo)),
            ("https://c.example/?a=b", false, Err(UrlProblem::Query)),
            ("https://c.example/?", false, Err(UrlProblem::Query)),
            ("https://c.example/#f", false, Err(UrlProblem::Fragment)),
            ("https://c.example/#", false, Err(UrlProblem::Fragment)),
        ];
        for (text, insecure, want) in cases {
            assert_eq!(check_url(text, *insecure).map(|_| ()), *want, "{text}");
        }
    }

    #[test]
    fn the_plan_has_both_urls_without_doubled_slashes() {
        let cases = [
            (
                "https://c.example",
                "https://r.example",
                "https://c.example/v1/logs",
                "https://r.example/graphql/v2",
            ),
            (
                "https://c.example/agent/otlp/",
                "https://r.example/",
                "https://c.example/agent/otlp/v1/logs",
                "https://r.example/graphql/v2",
            ),
            (
                "http://127.0.0.1:9/x",
                "http://127.0.0.1:8/p",
                "http://127.0.0.1:9/x/v1/logs",
                "http://127.0.0.1:8/p/graphql/v2",
            ),
        ];
        for (endpoint, root, logs, identity) in cases {
            let t = tc(endpoint, true);
            let Decision::Export(p) = run(true, Some(&t), TOKENS, root) else {
                panic!("{endpoint} {root} refused");
            };
            assert_eq!(p.logs_url.as_str(), logs);
            assert_eq!(p.identity_url.as_str(), identity);
            assert_eq!(p.api_key.expose(), "k");
            assert_eq!(p.workload_token.expose(), "w");
        }
    }

    #[test]
    fn no_env_vars_at_all_fails_the_token_gate() {
        let t = tc("https://c", true);
        let d = decide(Inputs {
            enabled: true,
            allow_insecure: false,
            telemetry: Some(&t),
            env_vars: None,
            server_root_url: "https://r",
        });
        assert_eq!(refused(d), Some(Gate::NoApiKey));
    }
}
