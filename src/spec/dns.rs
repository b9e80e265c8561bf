//! Name resolution for sealed tasks, and CVE-2024-29018.
//!
//! A task on a user-defined Docker network resolves through the engine's embedded resolver
//! (`nameserver 127.0.0.11`). Engines before 26.0.0 / 25.0.4 / 23.0.11 forward names it does not
//! know to the external servers even from an `internal` network, and when the host's resolver
//! is on loopback (systemd-resolved's `127.0.0.53`) they make that query from the host's own
//! network namespace: it leaves the host whatever the sealed network says, and a task can
//! exfiltrate data in the names it asks for. berth does not rely on the engine being new: a
//! sealed task's container is created with `--dns <its network's gateway>`. An explicit server
//! is always queried from the container's own namespace (the engine treats only servers taken
//! from the host's `resolv.conf` as host-loopback), and on the gateway berth's firewall chain
//! accepts nothing but the proxy port: the query is dropped. Allowlisted tasks never need DNS
//! (the proxy resolves the names it allows); a `none` task has no network and no resolver.

use std::net::IpAddr;

/// The `--dns` of a sealed task: its network's gateway, where nothing answers.
pub fn sealed_dns(gateway: IpAddr) -> Vec<String> {
    vec![gateway.to_string()]
}

/// Whether an engine version forwards an internal network's unknown names to the host's
/// resolvers (CVE-2024-29018).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Before the fixed releases: berth's pinned resolver is what closes the channel.
    Affected,
    /// 26.0.0 and later, 25.0.4+, 23.0.11+.
    Fixed,
    /// Not a version berth can read.
    Unknown,
}

/// Classifies a Docker engine version (`20.10.24+dfsg1`, `25.0.3`, `26.1.4`) (pure).
pub fn exposure(version: &str) -> Exposure {
    let core = version
        .split(['+', '-', '~'])
        .next()
        .unwrap_or_default()
        .trim_start_matches('v');
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return Exposure::Unknown;
    };
    let patch = parts.next().flatten().unwrap_or(0);
    let fixed = match (major, minor) {
        (m, _) if m >= 26 => true,
        (25, 0) => patch >= 4,
        (25, _) => true,
        (23, 0) => patch >= 11,
        _ => false,
    };
    if fixed {
        Exposure::Fixed
    } else {
        Exposure::Affected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_versions_are_classified_against_the_fixed_releases() {
        for (v, want) in [
            ("20.10.24+dfsg1", Exposure::Affected),
            ("20.10.5", Exposure::Affected),
            ("23.0.10", Exposure::Affected),
            ("23.0.11", Exposure::Fixed),
            ("24.0.9", Exposure::Affected),
            ("25.0.3", Exposure::Affected),
            ("25.0.4", Exposure::Fixed),
            ("26.0.0", Exposure::Fixed),
            ("26.1.4", Exposure::Fixed),
            ("28.2.2", Exposure::Fixed),
            ("v27.0.1", Exposure::Fixed),
            ("19.03.15-ce", Exposure::Affected),
            ("", Exposure::Unknown),
            ("dev", Exposure::Unknown),
        ] {
            assert_eq!(exposure(v), want, "{v}");
        }
    }

    #[test]
    fn a_sealed_task_resolves_through_its_gateway_only() {
        assert_eq!(
            sealed_dns("172.20.0.1".parse().unwrap()),
            ["172.20.0.1".to_string()]
        );
    }
}
