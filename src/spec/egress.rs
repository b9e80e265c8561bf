//! Egress policy: where a task may connect to. Pure: parsing allowlist entries, narrowing the
//! operator's policy by an environment, deciding one destination, and the entries berth
//! derives itself (the environment's repositories, the Oz endpoints the agent needs).

use std::net::IpAddr;

/// How much network a task gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Mode {
    /// Today's behaviour: the container's network (`policy.security.network`) as is.
    #[default]
    Open,
    /// No route out; only berth's egress proxy, which allows the listed destinations.
    Allowlist,
    /// No network at all.
    None,
}

impl Mode {
    /// Parses `open`, `allowlist` or `none`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "open" => Some(Mode::Open),
            "allowlist" => Some(Mode::Allowlist),
            "none" => Some(Mode::None),
            _ => None,
        }
    }

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Allowlist => "allowlist",
            Mode::None => "none",
        }
    }
}

/// Which hosts an entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One host name (lower case) or IP literal.
    Host(String),
    /// `*.example.com`: every subdomain (not `example.com` itself).
    Subdomains(String),
    /// An address range.
    Cidr(IpAddr, u8),
}

/// One allowlist entry: a target and, optionally, one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub target: Target,
    /// `None` = any port.
    pub port: Option<u16>,
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl Allow {
    /// Parses `host`, `host:port`, `*.domain[:port]`, an IP (`[v6]:port` for a v6 port) or
    /// `addr/len[:port]` (v4). The error says what is wrong.
    pub fn parse(entry: &str) -> Result<Allow, String> {
        let e = entry.trim();
        if e.is_empty() {
            return Err("an empty entry".into());
        }
        // A bare IPv6 address (no port).
        if let Ok(ip) = e.parse::<IpAddr>() {
            return Ok(Allow {
                target: Target::Host(ip.to_string()),
                port: None,
            });
        }
        let (body, port) = split_port(e)?;
        if let Some((addr, len)) = body.split_once('/') {
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("{addr:?} in {e:?} is not an IP address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 =
                len.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
                    format!("/{len} in {e:?} is not a prefix length of 0 to {max}")
                })?;
            return Ok(Allow {
                target: Target::Cidr(ip, len),
                port,
            });
        }
        let body = body.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = body.parse::<IpAddr>() {
            return Ok(Allow {
                target: Target::Host(ip.to_string()),
                port,
            });
        }
        let lower = body.to_ascii_lowercase();
        if let Some(domain) = lower.strip_prefix("*.") {
            if !valid_host(domain) {
                return Err(format!("{domain:?} in {e:?} is not a domain name"));
            }
            return Ok(Allow {
                target: Target::Subdomains(domain.to_string()),
                port,
            });
        }
        if !valid_host(&lower) {
            return Err(format!(
                "{body:?} is not a host name, *.domain, IP address or CIDR"
            ));
        }
        Ok(Allow {
            target: Target::Host(lower),
            port,
        })
    }

    /// Whether this entry allows `host:port` (`addrs`: what `host` resolved to).
    pub fn allows(&self, host: &str, port: u16, addrs: &[IpAddr]) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let literal = host.parse::<IpAddr>().ok();
        match &self.target {
            Target::Host(h) => match (literal, h.parse::<IpAddr>().ok()) {
                (Some(a), Some(b)) => a == b,
                _ => *h == host,
            },
            Target::Subdomains(d) => host.len() > d.len() + 1 && host.ends_with(&format!(".{d}")),
            Target::Cidr(net, len) => {
                // An IP literal, or a name every one of whose addresses is inside.
                let inside = |a: &IpAddr| in_cidr(a, net, *len);
                match literal {
                    Some(a) => inside(&a),
                    None => !addrs.is_empty() && addrs.iter().all(inside),
                }
            }
        }
    }
}

/// Splits a trailing `:port` off (a bare IPv6 address has none; `[v6]:port` does).
fn split_port(e: &str) -> Result<(&str, Option<u16>), String> {
    let bracketed = e.starts_with('[');
    let colon = if bracketed {
        e.find("]:").map(|i| i + 1)
    } else {
        e.rfind(':')
    };
    match colon {
        Some(i) if bracketed || e[..i].matches(':').count() == 0 => {
            let p = &e[i + 1..];
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} in {e:?} is not a port (1-65535)"))?;
            Ok((&e[..i], Some(port)))
        }
        _ => Ok((e, None)),
    }
}

fn in_cidr(a: &IpAddr, net: &IpAddr, len: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(*a) & mask == u32::from(*n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(*a) & mask == u128::from(*n) & mask
        }
        _ => false,
    }
}

/// Addresses of the host itself and of link-local services (cloud metadata): a name that
/// resolves there is refused unless a CIDR entry names the address, so an allowed name can
/// never be pointed at the worker's own services (DNS rebinding).
pub fn sensitive(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_loopback() || v.is_link_local() || v.is_unspecified(),
        IpAddr::V6(v) => {
            v.is_loopback() || v.is_unspecified() || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// What an environment asks for: it can only narrow the policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Narrowing {
    pub mode: Option<Mode>,
    pub allow: Option<Vec<Allow>>,
}

impl Narrowing {
    /// Decodes an environment's `egress: {mode?, allow?}` (JSON).
    pub fn parse(v: &serde_json::Value) -> Result<Narrowing, String> {
        let obj = v
            .as_object()
            .ok_or("egress must be an object {mode, allow}")?;
        let mut n = Narrowing::default();
        for (k, val) in obj {
            match k.as_str() {
                "mode" => {
                    let s = val.as_str().ok_or("egress.mode must be a string")?;
                    n.mode = Some(Mode::parse(s).ok_or_else(|| {
                        format!("egress.mode {s:?} is not open, allowlist or none")
                    })?);
                }
                "allow" => {
                    let list = val.as_array().ok_or("egress.allow must be a list")?;
                    let mut out = Vec::new();
                    for e in list {
                        let s = e.as_str().ok_or("egress.allow entries are strings")?;
                        out.push(Allow::parse(s).map_err(|p| format!("egress.allow: {p}"))?);
                    }
                    n.allow = Some(out);
                }
                other => return Err(format!("unknown field egress.{other} (mode, allow)")),
            }
        }
        Ok(n)
    }
}

/// A task's effective egress: the mode and the lists a destination must pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Egress {
    pub mode: Mode,
    /// The operator's allowlist (with berth's derived entries).
    pub allow: Vec<Allow>,
    /// The environment's narrowing list: when set, a destination must match it too.
    pub narrowed: Option<Vec<Allow>>,
}

/// The outcome of one connection request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
}

impl Decision {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
        }
    }
}

impl Egress {
    /// The operator's policy narrowed by an environment: the stricter mode wins, and an
    /// environment's list can only remove destinations (both lists must allow one).
    pub fn narrow(
        policy: &Egress,
        env_mode: Option<Mode>,
        env_allow: Option<Vec<Allow>>,
    ) -> Egress {
        let mode = env_mode.map_or(policy.mode, |m| m.max(policy.mode));
        // An open policy allows everything: an environment that asks for an allowlist gets
        // exactly its own list.
        if policy.mode == Mode::Open && mode == Mode::Allowlist {
            return Egress {
                mode,
                allow: env_allow.unwrap_or_default(),
                narrowed: None,
            };
        }
        Egress {
            mode,
            allow: policy.allow.clone(),
            narrowed: env_allow,
        }
    }

    /// Whether `host:port` may be reached (`addrs`: what `host` resolved to).
    pub fn decide(&self, host: &str, port: u16, addrs: &[IpAddr]) -> Decision {
        let passes = |list: &[Allow]| list.iter().any(|a| a.allows(host, port, addrs));
        let ok = match self.mode {
            Mode::Open => true,
            Mode::None => false,
            Mode::Allowlist => passes(&self.allow) && self.narrowed.as_deref().is_none_or(passes),
        };
        // A name may not lead to the host's own or link-local addresses unless a CIDR entry
        // (not a name) allows that exact address.
        let rebinding = host.parse::<IpAddr>().is_err()
            && addrs.iter().any(|a| {
                sensitive(a)
                    && !self.allow.iter().any(|e| {
                        matches!(e.target, Target::Cidr(..)) && e.allows(&a.to_string(), port, &[])
                    })
            });
        if ok && !rebinding {
            Decision::Allowed
        } else {
            Decision::Denied
        }
    }
}

/// The entry berth derives for a URL the task needs (`https://host[:port]/…`,
/// `http://…`, `ssh://…`, `git@host:path`): its host and port. `None` for local paths.
pub fn derived(url: &str) -> Option<Allow> {
    let default_port = |scheme: &str| match scheme {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        "ssh" | "git+ssh" => Some(22),
        "git" => Some(9418),
        _ => None,
    };
    if let Ok(u) = url::Url::parse(url) {
        // A URL without a host (`file:///…`) needs no network.
        let host = u.host_str()?;
        let port = u.port().or_else(|| default_port(u.scheme()))?;
        return Allow::parse(&format!(
            "{}:{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        ))
        .ok()
        .map(|a| Allow {
            port: Some(port),
            ..a
        });
    }
    // scp-like `user@host:path`.
    let (userhost, _) = url.split_once(':')?;
    let host = userhost.rsplit_once('@').map_or(userhost, |(_, h)| h);
    if url.starts_with('/') || host.contains('/') || !valid_host(host) {
        return None;
    }
    Some(Allow {
        target: Target::Host(host.to_ascii_lowercase()),
        port: Some(22),
    })
}

/// The proxy variables for a task, in both spellings (curl and busybox read only the lower
/// case ones). `no_proxy` keeps loopback local.
pub fn proxy_env(proxy: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (k, val) in [
        ("http_proxy", proxy),
        ("https_proxy", proxy),
        ("no_proxy", "localhost,127.0.0.1,::1"),
    ] {
        v.push((k.to_string(), val.to_string()));
        v.push((k.to_ascii_uppercase(), val.to_string()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_parse_or_say_what_is_wrong() {
        let ok = [
            ("pypi.org", Target::Host("pypi.org".into()), None),
            ("PyPI.org:443", Target::Host("pypi.org".into()), Some(443)),
            (
                "*.github.com",
                Target::Subdomains("github.com".into()),
                None,
            ),
            (
                "*.github.com:22",
                Target::Subdomains("github.com".into()),
                Some(22),
            ),
            ("10.0.0.0/8", Target::Cidr(ip("10.0.0.0"), 8), None),
            (
                "10.1.2.3/32:8080",
                Target::Cidr(ip("10.1.2.3"), 32),
                Some(8080),
            ),
            (
                "192.168.1.5:80",
                Target::Host("192.168.1.5".into()),
                Some(80),
            ),
            ("::1", Target::Host("::1".into()), None),
            ("[fd00::1]:443", Target::Host("fd00::1".into()), Some(443)),
            ("fd00::/8", Target::Cidr(ip("fd00::"), 8), None),
        ];
        for (e, target, port) in ok {
            assert_eq!(Allow::parse(e), Ok(Allow { target, port }), "{e}");
        }
        for bad in [
            "",
            "host:0",
            "host:99999",
            "host:http",
            "10.0.0.0/33",
            "nope/8",
            "*.",
            "a b",
            "exa_mple.com",
            "*.*.com",
            "http://x.com",
        ] {
            let e = Allow::parse(bad);
            assert!(e.is_err(), "{bad:?} parsed as {e:?}");
        }
    }

    #[test]
    fn entries_allow_exactly_what_they_name() {
        let a = |e: &str| Allow::parse(e).unwrap();
        let none: &[IpAddr] = &[];
        let cases: &[(&str, &str, u16, &[IpAddr], bool)] = &[
            ("pypi.org", "pypi.org", 443, none, true),
            ("pypi.org", "PYPI.ORG", 80, none, true),
            ("pypi.org", "files.pypi.org", 443, none, false),
            ("pypi.org", "pypi.org.evil.com", 443, none, false),
            ("pypi.org:443", "pypi.org", 80, none, false),
            ("*.github.com", "api.github.com", 443, none, true),
            ("*.github.com", "a.b.github.com", 443, none, true),
            ("*.github.com", "github.com", 443, none, false),
            ("*.github.com", "evilgithub.com", 443, none, false),
            ("10.0.0.0/8", "10.9.8.7", 80, none, true),
            ("10.0.0.0/8", "11.0.0.1", 80, none, false),
            ("10.0.0.0/8", "internal.corp", 80, &[ip("10.1.1.1")], true),
            (
                "10.0.0.0/8",
                "mixed.corp",
                80,
                &[ip("10.1.1.1"), ip("8.8.8.8")],
                false,
            ),
            ("10.0.0.0/8", "unresolved.corp", 80, none, false),
            ("192.168.1.5:80", "192.168.1.5", 80, none, true),
            ("192.168.1.5:80", "192.168.1.6", 80, none, false),
            ("[fd00::1]:443", "[fd00::1]", 443, none, true),
        ];
        for (entry, host, port, addrs, want) in cases {
            assert_eq!(
                a(entry).allows(host, *port, addrs),
                *want,
                "{entry} vs {host}:{port}"
            );
        }
    }

    #[test]
    fn modes_narrowing_and_rebinding() {
        let list = |xs: &[&str]| {
            xs.iter()
                .map(|x| Allow::parse(x).unwrap())
                .collect::<Vec<_>>()
        };
        let policy = Egress {
            mode: Mode::Allowlist,
            allow: list(&["pypi.org", "*.github.com", "10.0.0.0/8"]),
            narrowed: None,
        };
        let d = |e: &Egress, h: &str, p: u16, a: &[IpAddr]| e.decide(h, p, a);
        assert_eq!(
            d(&policy, "pypi.org", 443, &[ip("151.101.0.223")]),
            Decision::Allowed
        );
        assert_eq!(d(&policy, "example.com", 443, &[]), Decision::Denied);
        // An allowed name resolving to the host's own loopback or link-local (metadata) is
        // refused; a CIDR naming the address allows it.
        assert_eq!(
            d(&policy, "pypi.org", 443, &[ip("127.0.0.1")]),
            Decision::Denied
        );
        assert_eq!(
            d(&policy, "api.github.com", 80, &[ip("169.254.169.254")]),
            Decision::Denied
        );
        let lo = Egress {
            allow: list(&["pypi.org", "127.0.0.1/32"]),
            ..policy.clone()
        };
        assert_eq!(
            d(&lo, "pypi.org", 443, &[ip("127.0.0.1")]),
            Decision::Allowed
        );
        // An environment narrows: both lists must allow; it cannot add.
        let env = Egress::narrow(&policy, None, Some(list(&["pypi.org", "example.com"])));
        assert_eq!(env.mode, Mode::Allowlist);
        assert_eq!(d(&env, "pypi.org", 443, &[]), Decision::Allowed);
        assert_eq!(d(&env, "api.github.com", 443, &[]), Decision::Denied);
        assert_eq!(d(&env, "example.com", 443, &[]), Decision::Denied);
        // The stricter mode wins.
        let open = Egress::default();
        assert_eq!(
            Egress::narrow(&open, Some(Mode::Allowlist), None).mode,
            Mode::Allowlist
        );
        // Under an open policy an environment's allowlist is the whole list.
        let own = Egress::narrow(&open, Some(Mode::Allowlist), Some(list(&["pypi.org"])));
        assert_eq!(d(&own, "pypi.org", 443, &[]), Decision::Allowed);
        assert_eq!(d(&own, "example.com", 443, &[]), Decision::Denied);
        let nothing = Egress::narrow(&open, Some(Mode::Allowlist), None);
        assert_eq!(d(&nothing, "pypi.org", 443, &[]), Decision::Denied);
        assert_eq!(
            Egress::narrow(&policy, Some(Mode::Open), None).mode,
            Mode::Allowlist
        );
        assert_eq!(
            Egress::narrow(&policy, Some(Mode::None), None).mode,
            Mode::None
        );
        assert_eq!(d(&open, "anything", 1, &[]), Decision::Allowed);
        let none = Egress {
            mode: Mode::None,
            ..Egress::default()
        };
        assert_eq!(d(&none, "pypi.org", 443, &[]), Decision::Denied);
    }

    #[test]
    fn berth_derives_the_host_and_port_of_each_url() {
        let cases = [
            ("https://github.com/org/app.git", Some("github.com:443")),
            ("http://git.corp:8080/x.git", Some("git.corp:8080")),
            ("ssh://git@git.corp:2222/x.git", Some("git.corp:2222")),
            ("git@github.com:org/app.git", Some("github.com:22")),
            ("https://app.warp.dev", Some("app.warp.dev:443")),
            ("http://172.18.0.1:9000/", Some("172.18.0.1:9000")),
            ("/srv/repo.git", None),
            ("file:///srv/repo.git", None),
        ];
        for (url, want) in cases {
            assert_eq!(
                derived(url),
                want.map(|w| Allow::parse(w).unwrap()),
                "{url}"
            );
        }
    }

    #[test]
    fn proxy_variables_come_in_both_spellings() {
        let env = proxy_env("http://172.18.0.1:3128");
        for k in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "no_proxy",
            "NO_PROXY",
        ] {
            assert!(env.iter().any(|(n, _)| n == k), "{k}");
        }
    }
}
