//! `policy.*` (alias `backend.policy.*`): what tasks may run and do, whatever the
//! backend (images, security, resources, time, egress). `resources_of` also reads the other resource blocks of the file.

use serde_saphyr::Spanned;

use super::collector::Collector;
use super::raw::{RawEgress, RawPolicy, RawResources};
use crate::units::{parse_duration, parse_size};

pub(super) fn resources_of(
    key: &str,
    r: Option<RawResources>,
    c: &mut Collector<'_>,
) -> crate::spec::policy::Resources {
    let r = r.unwrap_or_default();
    let cpus = r.cpus.and_then(|sp| {
        if sp.value > 0.0 && sp.value.is_finite() {
            Some(sp.value)
        } else {
            c.at(
                &format!("{key}.cpus"),
                Some(&sp),
                format!("{} is not a positive number of CPUs", sp.value),
                "use e.g. 2 or 0.5",
            );
            None
        }
    });
    let memory = r.memory.and_then(|sp| match parse_size(&sp.value) {
        Ok(n) if n >= 4 << 20 => Some(n),
        Ok(_) => {
            c.at(
                &format!("{key}.memory"),
                Some(&sp),
                format!("{:?} is below Docker's minimum of 6MiB", sp.value),
                "use e.g. 512MiB or 8GiB",
            );
            None
        }
        Err(p) => {
            c.at(
                &format!("{key}.memory"),
                Some(&sp),
                p,
                "use e.g. 512MiB or 8GiB",
            );
            None
        }
    });
    crate::spec::policy::Resources { cpus, memory }
}

/// The old name of the policy section, still read (with a deprecation note).
pub const POLICY_ALIAS: &str = "backend.docker.policy";

/// The policy from `policy:` or, when only that is set, from its old name
/// `backend.docker.policy:` (with a note saying so); both at once is an error.
pub(super) fn policy_section(
    top: Option<RawPolicy>,
    alias: Option<RawPolicy>,
    c: &mut Collector<'_>,
) -> (crate::spec::policy::Policy, Option<String>) {
    match (top, alias) {
        (Some(_), Some(_)) => {
            c.at::<()>(
                POLICY_ALIAS,
                None,
                "the policy is set twice: under policy: and under backend.docker.policy: (its old name)".into(),
                "keep only the top-level policy: section (move any key from backend.docker.policy there)",
            );
            (crate::spec::policy::Policy::default(), None)
        }
        (None, Some(old)) => (
            policy_of(POLICY_ALIAS, old, c),
            Some(format!(
                "{POLICY_ALIAS} is the old name of the top-level policy: section (the policy applies whatever the backend); move it there — it is still read for now"
            )),
        ),
        (top, None) => (policy_of("policy", top.unwrap_or_default(), c), None),
    }
}

pub(super) fn policy_of(
    prefix: &str,
    raw: RawPolicy,
    c: &mut Collector<'_>,
) -> crate::spec::policy::Policy {
    use crate::spec::policy::{Policy, Security};
    let d = Policy::default();
    let mut allowed = Vec::new();
    for p in raw.allowed_images.unwrap_or_default() {
        if p.value.trim().is_empty() || p.value.contains(char::is_whitespace) {
            c.at(&format!("{prefix}.allowed_images"), Some(&p), format!("{:?} is not an image pattern", p.value), "write patterns over normalised references, e.g. registry.example.com/** or docker.io/library/ubuntu:*");
        }
        allowed.push(p.value);
    }
    let sec = raw.security.unwrap_or_default();
    let caps =
        |key: &str, list: Option<Vec<Spanned<String>>>, c: &mut Collector<'_>| -> Vec<String> {
            let mut out = Vec::new();
            for cap in list.unwrap_or_default() {
                let ok = !cap.value.is_empty()
                    && cap
                        .value
                        .chars()
                        .all(|ch| ch.is_ascii_uppercase() || ch == '_');
                if !ok {
                    c.at(
                        key,
                        Some(&cap),
                        format!("{:?} is not a capability name", cap.value),
                        "use names like NET_RAW, SYS_ADMIN or ALL",
                    );
                }
                out.push(cap.value);
            }
            out
        };
    // Runtime names go to the engine verbatim: keep them plain names.
    let runtime_name = |key: &str, r: Spanned<String>, c: &mut Collector<'_>| -> String {
        let ok = !r.value.is_empty()
            && r.value
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
        if !ok {
            c.at(
                key,
                Some(&r),
                format!("{:?} is not an OCI runtime name", r.value),
                "use the name the runtime is registered under in /etc/docker/daemon.json, e.g. runsc",
            );
        }
        r.value
    };
    let runtime = sec
        .runtime
        .filter(|r| !r.value.is_empty())
        .map(|r| runtime_name(&format!("{prefix}.security.runtime"), r, c));
    let allowed_runtimes: Vec<String> = sec
        .allowed_runtimes
        .unwrap_or_default()
        .into_iter()
        .map(|r| runtime_name(&format!("{prefix}.security.allowed_runtimes"), r, c))
        .collect();
    let cap_drop = caps(&format!("{prefix}.security.cap_drop"), sec.cap_drop, c);
    let cap_add = caps(&format!("{prefix}.security.cap_add"), sec.cap_add, c);
    let network = match sec.network {
        None => d.security.network.clone(),
        Some(n) => {
            if n.value == "host" {
                c.at(
                    &format!("{prefix}.security.network"),
                    Some(&n),
                    "network \"host\" would give tasks the host's network stack".into(),
                    "use bridge, none, or a named Docker network",
                );
            }
            n.value
        }
    };
    let timeout = match raw.timeout {
        None => d.timeout,
        Some(sp) => match parse_duration(&sp.value) {
            Ok(t) => t,
            Err(p) => {
                c.at(
                    &format!("{prefix}.timeout"),
                    Some(&sp),
                    p,
                    "use a duration such as 2h, or 0s for no limit",
                );
                d.timeout
            }
        },
    };
    let default_resources = resources_of(
        &format!("{prefix}.default_resources"),
        raw.default_resources,
        c,
    );
    let max_resources = resources_of(&format!("{prefix}.max_resources"), raw.max_resources, c);
    let (egress, egress_proxy_port) = egress_of(prefix, raw.egress.unwrap_or_default(), c);
    let profile = match sec.profile {
        None => crate::spec::policy::Profile::Default,
        Some(p) => match p.value.as_str() {
            "default" => crate::spec::policy::Profile::Default,
            "strict" => crate::spec::policy::Profile::Strict,
            other => {
                c.at(
                    &format!("{prefix}.security.profile"),
                    Some(&p),
                    format!("{other:?} is not a security profile"),
                    "use default (the settings as configured) or strict",
                );
                crate::spec::policy::Profile::Default
            }
        },
    };
    Policy {
        allowed_images: allowed,
        security: Security {
            no_new_privileges: sec.no_new_privileges.unwrap_or(true),
            cap_drop,
            cap_add,
            pids_limit: match sec.pids_limit {
                None => d.security.pids_limit,
                Some(n) if n > 0 => Some(n),
                Some(_) => None,
            },
            read_only_rootfs: sec.read_only_rootfs.unwrap_or(false),
            user: sec.user.filter(|u| !u.is_empty()),
            runtime,
            network,
            tmpfs: Vec::new(),
        },
        default_resources,
        max_resources,
        timeout,
        allowed_runtimes,
        egress,
        egress_proxy_port,
        profile,
    }
}

fn egress_of(
    prefix: &str,
    raw: RawEgress,
    c: &mut Collector<'_>,
) -> (crate::spec::egress::Egress, u16) {
    use crate::spec::egress::{Allow, Egress, Mode};
    let mode = match raw.mode {
        None => Mode::Open,
        Some(m) => Mode::parse(&m.value).unwrap_or_else(|| {
            c.at(
                &format!("{prefix}.egress.mode"),
                Some(&m),
                format!("{:?} is not an egress mode", m.value),
                "use open (no restriction), allowlist (only the allow list, through berth's proxy) or none (no network)",
            );
            Mode::Open
        }),
    };
    let mut allow = Vec::new();
    for e in raw.allow.unwrap_or_default() {
        match Allow::parse(&e.value) {
            Ok(a) => allow.push(a),
            Err(problem) => c.at(
                &format!("{prefix}.egress.allow"),
                Some(&e),
                problem,
                "write host, host:port, *.domain[:port], an IP or a CIDR such as 10.0.0.0/8",
            ),
        }
    }
    let port = match raw.proxy_port {
        None => crate::spec::policy::DEFAULT_EGRESS_PROXY_PORT,
        Some(p) if p.value > 0 => p.value,
        Some(p) => {
            c.at(
                &format!("{prefix}.egress.proxy_port"),
                Some(&p),
                "port 0 is not a port".into(),
                "use a free TCP port such as 3128",
            );
            crate::spec::policy::DEFAULT_EGRESS_PROXY_PORT
        }
    };
    (
        Egress {
            mode,
            allow,
            narrowed: None,
        },
        port,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{load_yaml, one_error, with_key};

    #[test]
    fn isolation_keys_parse_and_bad_values_name_their_key_and_line() {
        let yaml = "worker_id: w\nbackend:\n  docker:\n    policy:\n      security:\n        profile: strict\n        runtime: runsc\n        allowed_runtimes: [kata]\n      egress:\n        mode: allowlist\n        allow: [pypi.org, '*.github.com:443', 10.0.0.0/8]\n        proxy_port: 3129\n";
        let c = load_yaml(yaml, &with_key()).unwrap();
        let p = &c.policy;
        assert_eq!(p.profile, crate::spec::policy::Profile::Strict);
        assert_eq!(p.security.runtime.as_deref(), Some("runsc"));
        assert_eq!(p.allowed_runtimes, ["kata"]);
        assert_eq!(p.egress.mode, crate::spec::egress::Mode::Allowlist);
        assert_eq!(p.egress.allow.len(), 3);
        assert_eq!(p.egress_proxy_port, 3129);
        let d = load_yaml("worker_id: w\n", &with_key()).unwrap();
        assert_eq!(d.policy.egress.mode, crate::spec::egress::Mode::Open);
        assert_eq!(d.policy.profile, crate::spec::policy::Profile::Default);
        for (section, bad, key) in [
            (
                "security",
                "        profile: paranoid\n",
                "backend.docker.policy.security.profile",
            ),
            (
                "security",
                "        runtime: 'run sc'\n",
                "backend.docker.policy.security.runtime",
            ),
            (
                "egress",
                "        mode: closed\n",
                "backend.docker.policy.egress.mode",
            ),
            (
                "egress",
                "        allow: ['http://x.com']\n",
                "backend.docker.policy.egress.allow",
            ),
            (
                "egress",
                "        proxy_port: 0\n",
                "backend.docker.policy.egress.proxy_port",
            ),
        ] {
            let y =
                format!("worker_id: w\nbackend:\n  docker:\n    policy:\n      {section}:\n{bad}");
            let e = one_error(&y);
            assert_eq!(
                (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
                (key, Some(6)),
                "{e}"
            );
        }
    }

    #[test]
    fn the_policy_is_a_top_level_section_and_its_old_name_still_reads_with_a_note() {
        let top = "worker_id: w\npolicy:\n  timeout: 2h\n  security:\n    profile: paranoid\n";
        let e = one_error(top);
        assert_eq!(e.key, "policy.security.profile", "{e}");
        let top = "worker_id: w\npolicy:\n  timeout: 2h\n";
        let c = load_yaml(top, &with_key()).unwrap();
        assert_eq!(c.policy.timeout, Duration::from_secs(7200));
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        let old = "worker_id: w\nbackend:\n  docker:\n    policy:\n      timeout: 3h\n";
        let c = load_yaml(old, &with_key()).unwrap();
        assert_eq!(c.policy.timeout, Duration::from_secs(10800));
        assert!(
            c.notes.len() == 1 && c.notes[0].contains("backend.docker.policy is the old name"),
            "{:?}",
            c.notes
        );
        let both = "worker_id: w\npolicy:\n  timeout: 2h\nbackend:\n  docker:\n    policy:\n      timeout: 3h\n";
        let e = one_error(both);
        assert_eq!(e.key, "backend.docker.policy", "{e}");
        assert!(
            e.to_string().contains("keep only the top-level policy:"),
            "{e}"
        );
    }

    #[test]
    fn the_operator_policy_from_the_issue_is_expressible_and_validated() {
        let yaml = "worker_id: w\nbackend:\n  docker:\n    policy:\n      allowed_images: ['registry.example.com/**']\n      security:\n        no_new_privileges: true\n        cap_drop: [ALL]\n        pids_limit: 512\n        network: none\n      max_resources:\n        cpus: 4\n        memory: 8GiB\n      timeout: 2h\n";
        let c = load_yaml(yaml, &with_key()).unwrap();
        let p = &c.policy;
        assert_eq!(p.allowed_images, ["registry.example.com/**"]);
        assert_eq!(
            (p.max_resources.cpus, p.max_resources.memory),
            (Some(4.0), Some(8 << 30))
        );
        assert_eq!(p.timeout, Duration::from_secs(7200));
        assert_eq!(
            (p.security.pids_limit, p.security.network.as_str()),
            (Some(512), "none")
        );
        assert_eq!(p.security.cap_drop, ["ALL"]);
        for (bad, key, line) in [
            (
                "        network: host\n",
                "backend.docker.policy.security.network",
                6,
            ),
            (
                "        cap_add: [net_raw]\n",
                "backend.docker.policy.security.cap_add",
                6,
            ),
        ] {
            let y =
                format!("worker_id: w\nbackend:\n  docker:\n    policy:\n      security:\n{bad}");
            let e = one_error(&y);
            assert_eq!(
                (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
                (key, Some(line)),
                "{e}"
            );
        }
        let e = one_error(
            "worker_id: w\nbackend:\n  docker:\n    policy:\n      max_resources:\n        memory: 8GB\n",
        );
        assert_eq!(e.key, "backend.docker.policy.max_resources.memory");
        let e = one_error(
            "worker_id: w\nbackend:\n  docker:\n    policy:\n      default_resources:\n        cpus: -1\n",
        );
        assert_eq!(e.key, "backend.docker.policy.default_resources.cpus");
    }
}
