//! The host side of the sealed network. Docker's `internal` flag stops forwarding out of the
//! bridge, but a container can still reach every address of the host itself (sshd, the local
//! API, anything listening on 0.0.0.0) through the bridge. berth closes that: on the bridge's
//! interface only the egress proxy's port on the gateway is accepted; everything else is
//! dropped (IPv4 and IPv6).

use std::net::IpAddr;
use std::process::Command;

/// Why the host firewall could not be set.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot seal network bridge {bridge} on the host ({cmd}: {reason}); egress allowlists need iptables and CAP_NET_ADMIN (root, or AmbientCapabilities=CAP_NET_ADMIN in the unit). Tasks with egress mode allowlist are refused until it works"
)]
pub struct FirewallError {
    bridge: String,
    cmd: String,
    reason: String,
}

/// The chain berth owns for `bridge`.
pub fn chain(bridge: &str) -> String {
    format!(
        "BERTH-{}",
        bridge.trim_start_matches("berth-").to_ascii_uppercase()
    )
}

/// The commands that seal `bridge` (pure, for tests and for the log): a chain accepting only
/// the proxy, hooked first into INPUT for the bridge's interface.
pub fn rules(bridge: &str, gateway: IpAddr, port: u16) -> Vec<(&'static str, Vec<String>)> {
    let chain = chain(bridge);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let port = port.to_string();
    let gw = gateway.to_string();
    vec![
        ("iptables", s(&["-w", "-N", &chain])),
        ("iptables", s(&["-w", "-F", &chain])),
        (
            "iptables",
            s(&[
                "-w", "-A", &chain, "-p", "tcp", "-d", &gw, "--dport", &port, "-j", "ACCEPT",
            ]),
        ),
        ("iptables", s(&["-w", "-A", &chain, "-j", "DROP"])),
        (
            "iptables",
            s(&["-w", "-I", "INPUT", "1", "-i", bridge, "-j", &chain]),
        ),
        (
            "ip6tables",
            s(&["-w", "-I", "INPUT", "1", "-i", bridge, "-j", "DROP"]),
        ),
    ]
}

/// Removes what [`seal`] added for `bridge` (best effort: for tools and tests that remove the
/// sealed network too; berth itself keeps the rules as long as the network exists).
pub fn unseal(bridge: &str) {
    let chain = chain(bridge);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for (tool, args) in [
        (
            "iptables",
            s(&["-w", "-D", "INPUT", "-i", bridge, "-j", &chain]),
        ),
        ("iptables", s(&["-w", "-F", &chain])),
        ("iptables", s(&["-w", "-X", &chain])),
        (
            "ip6tables",
            s(&["-w", "-D", "INPUT", "-i", bridge, "-j", "DROP"]),
        ),
    ] {
        let _ = run(tool, &args);
    }
}

fn run(tool: &str, args: &[String]) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Seals `bridge`: idempotent (an existing chain is flushed and refilled, the INPUT jump is
/// added once).
pub fn seal(bridge: &str, gateway: IpAddr, port: u16) -> Result<(), FirewallError> {
    for (tool, args) in rules(bridge, gateway, port) {
        let is = |flag: &str| args.get(1).map(String::as_str) == Some(flag);
        // A jump that is there already is not added twice.
        if is("-I") {
            let mut check = args.clone();
            check[1] = "-C".into();
            check.remove(3);
            if run(tool, &check).is_ok() {
                continue;
            }
        }
        match run(tool, &args) {
            Ok(()) => {}
            // The chain exists from an earlier start.
            Err(e) if is("-N") && e.contains("exists") => {}
            // A host without IPv6 has nothing to seal there.
            Err(_) if tool == "ip6tables" => {}
            Err(reason) => {
                return Err(FirewallError {
                    bridge: bridge.to_string(),
                    cmd: format!("{tool} {}", args.join(" ")),
                    reason,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_proxy_port_on_the_gateway_is_let_in() {
        let r = rules("berth-1a2b3c4d", "172.20.0.1".parse().unwrap(), 3128);
        let text: Vec<String> = r
            .iter()
            .map(|(t, a)| format!("{t} {}", a.join(" ")))
            .collect();
        assert_eq!(
            text,
            [
                "iptables -w -N BERTH-1A2B3C4D",
                "iptables -w -F BERTH-1A2B3C4D",
                "iptables -w -A BERTH-1A2B3C4D -p tcp -d 172.20.0.1 --dport 3128 -j ACCEPT",
                "iptables -w -A BERTH-1A2B3C4D -j DROP",
                "iptables -w -I INPUT 1 -i berth-1a2b3c4d -j BERTH-1A2B3C4D",
                "ip6tables -w -I INPUT 1 -i berth-1a2b3c4d -j DROP",
            ]
        );
    }
}
