//! `api.*` (and `--api-listen`): where the local API listens and who may use its socket.

use std::path::PathBuf;

use super::collector::Collector;
use super::overrides::Overrides;
use super::raw::RawApi;

/// Where the local API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (mutating requests need the admin token).
    Tcp(std::net::SocketAddr),
    /// A Unix socket (mode 0660; every request is trusted).
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Parses `api.listen`: `host:port`, an absolute socket path, or `off`.
pub fn parse_listen(s: &str) -> Result<Option<Listen>, String> {
    let s = s.trim();
    if s == "off" {
        return Ok(None);
    }
    if s.starts_with('/') {
        return Ok(Some(Listen::Unix(PathBuf::from(s))));
    }
    s.parse()
        .map(|a| Some(Listen::Tcp(a)))
        .map_err(|_| format!("{s:?} is neither host:port, an absolute socket path, nor off"))
}

/// Local API settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// `None` = no local API.
    pub listen: Option<Listen>,
    /// Group owning the Unix socket (mode 0660).
    pub socket_group: Option<String>,
}

/// Default `api.listen`.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:9464";

pub(super) fn api_section(raw_api: RawApi, ov: &Overrides, c: &mut Collector<'_>) -> ApiSettings {
    ApiSettings {
        listen: match ov.api_listen.as_deref() {
            Some(flag) => parse_listen(flag).unwrap_or_else(|p| {
                c.at::<String>(
                    "api.listen",
                    None,
                    format!("--api-listen: {p}"),
                    "use e.g. 127.0.0.1:9464, /run/berth/api.sock or off",
                );
                None
            }),
            None => match &raw_api.listen {
                None => parse_listen(DEFAULT_API_LISTEN).unwrap_or(None),
                Some(sp) => parse_listen(&sp.value).unwrap_or_else(|p| {
                    c.at(
                        "api.listen",
                        Some(sp),
                        p,
                        "use e.g. 127.0.0.1:9464, /run/berth/api.sock or off",
                    );
                    None
                }),
            },
        },
        socket_group: raw_api.socket_group.map(|g| {
            if g.value.trim().is_empty() || g.value.contains(char::is_whitespace) {
                c.at(
                    "api.socket_group",
                    Some(&g),
                    format!("{:?} is not a group name", g.value),
                    "use a group such as berth-admin, or remove the key",
                );
            }
            g.value
        }),
    }
}
