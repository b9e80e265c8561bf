//! `control_plane.*` with the flags that override it: where the worker dials, how it proves
//! who it is, and the one rule for URLs the API key is sent to.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::api_key::api_key_of;
use super::collector::Collector;
use super::overrides::Overrides;
use super::raw::RawControlPlane;
use crate::secret::Secret;
use crate::units::parse_size;

/// Default control-plane WebSocket (the Oz endpoint).
pub const DEFAULT_URL: &str = "wss://oz.warp.dev/api/v1/selfhosted/worker/ws";
/// Default root URL handed to the agent.
pub const DEFAULT_SERVER_ROOT_URL: &str = "https://app.warp.dev";
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_MESSAGE: u64 = 16 << 20;
const DEFAULT_ENVIRONMENTS_TTL: Duration = Duration::from_secs(300);
const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(15);

/// Control-plane connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlane {
    /// WebSocket URL (`worker_id` is added when dialling).
    pub url: url::Url,
    /// Root URL handed to the agent.
    pub server_root_url: String,
    /// Bearer API key.
    pub api_key: Secret,
    /// Where the key came from (for `check-config`).
    pub api_key_source: String,
    /// Extra CA bundle (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mTLS (PEM).
    pub client_cert_file: Option<PathBuf>,
    /// Client key for mTLS (PEM).
    pub client_key_file: Option<PathBuf>,
    /// Allow `ws://` to non-loopback hosts.
    pub allow_insecure: bool,
    /// Ping interval; the link is dead after twice this much silence.
    pub heartbeat_interval: Duration,
    /// Largest inbound message.
    pub max_message_size: u64,
    /// `--session-sharing-server-url` for the agent.
    pub session_sharing_server_url: Option<String>,
    /// Template (`…/{id}`) of the environments API; `None` = environments are not fetched.
    pub environments_url: Option<String>,
    /// How long a fetched environment is used before it is revalidated.
    pub environments_ttl: Duration,
    /// Period of `worker_status` (berth/1).
    pub status_interval: Duration,
}

/// What a URL the API key is sent over speaks: a TLS scheme, and its plain twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyTransport {
    /// `wss://`, or `ws://` (the session).
    WebSocket,
    /// `https://`, or `http://` (the environments API).
    Http,
}

impl KeyTransport {
    /// The TLS scheme and its plain twin.
    fn schemes(self) -> (&'static str, &'static str) {
        match self {
            KeyTransport::WebSocket => ("wss", "ws"),
            KeyTransport::Http => ("https", "http"),
        }
    }
}

/// The one rule for URLs the API key is sent to: the TLS scheme always, the plain one only to a
/// loopback host or when the operator set `control_plane.allow_insecure`. `text` is the URL as
/// written, for the message; the error is what is wrong and how to fix it.
fn check_key_url(
    url: &url::Url,
    text: &str,
    transport: KeyTransport,
    allow_insecure: bool,
) -> Result<(), (String, &'static str)> {
    let (secure, plain) = transport.schemes();
    let scheme = url.scheme();
    if scheme == secure || (scheme == plain && (allow_insecure || is_loopback_host(url))) {
        return Ok(());
    }
    // Only the rule is shared: each transport keeps the words it always had.
    Err(match (transport, scheme == plain) {
        (KeyTransport::WebSocket, true) => (
            format!(
                "plain ws:// to non-loopback host in {text:?} would send the API key unencrypted"
            ),
            "use wss://, or set control_plane.allow_insecure: true if the network is trusted",
        ),
        (KeyTransport::WebSocket, false) => (
            format!("scheme {scheme:?} in {text:?} is not a WebSocket URL"),
            "use wss://host/path (or ws:// for a loopback test server)",
        ),
        (KeyTransport::Http, true) => (
            format!(
                "plain http:// to a non-loopback host in {text:?} would send the API key unencrypted"
            ),
            "use https://, or set control_plane.allow_insecure: true if the network is trusted",
        ),
        (KeyTransport::Http, false) => (
            format!("scheme {scheme:?} in {text:?} is not HTTP"),
            "use https://host/path/{id}",
        ),
    })
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// `control_plane.*` (with the flags that override it); `None` when the URL is unusable.
pub(super) fn control_plane_section(
    cp: RawControlPlane,
    ov: &Overrides,
    c: &mut Collector<'_>,
) -> Option<ControlPlane> {
    // control plane url
    let url_text = ov
        .control_plane_url
        .clone()
        .or_else(|| cp.url.as_ref().map(|s| s.value.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let url_key = if ov.control_plane_url.is_some() {
        "--control-plane-url"
    } else {
        "control_plane.url"
    };
    let url_span = if ov.control_plane_url.is_some() {
        None
    } else {
        cp.url.as_ref()
    };
    let allow_insecure = cp.allow_insecure.unwrap_or(false);
    let url = match url::Url::parse(&url_text) {
        Ok(u) => {
            if let Err((problem, fix)) =
                check_key_url(&u, &url_text, KeyTransport::WebSocket, allow_insecure)
            {
                c.at(url_key, url_span, problem, fix);
            }
            Some(u)
        }
        Err(e) => {
            c.at(
                url_key,
                url_span,
                format!("{url_text:?} is not a URL: {e}"),
                "use e.g. wss://oz.warp.dev/api/v1/selfhosted/worker/ws",
            );
            None
        }
    };

    let environments_url = cp.environments_url.as_ref().map(|sp| {
        let t = sp.value.trim().to_string();
        match url::Url::parse(&t.replace("{id}", "x")) {
            Ok(_) if !t.contains("{id}") => c.at(
                "control_plane.environments_url",
                Some(sp),
                format!("{t:?} has no {{id}} placeholder"),
                "write where the environment id goes, e.g. https://cp.example.com/api/v1/environments/{id}",
            ),
            Ok(u) => {
                if let Err((problem, fix)) =
                    check_key_url(&u, &t, KeyTransport::Http, allow_insecure)
                {
                    c.at("control_plane.environments_url", Some(sp), problem, fix);
                }
            }
            Err(e) => c.at(
                "control_plane.environments_url",
                Some(sp),
                format!("{t:?} is not a URL: {e}"),
                "use e.g. https://cp.example.com/api/v1/environments/{id}",
            ),
        }
        t
    });
    let status_interval = c.duration_min(
        "control_plane.status_interval",
        cp.status_interval.as_ref(),
        DEFAULT_STATUS_INTERVAL,
        Duration::from_secs(1),
        "use a duration such as 15s",
    );
    let environments_ttl = c.duration(
        "control_plane.environments_ttl",
        cp.environments_ttl.as_ref(),
        DEFAULT_ENVIRONMENTS_TTL,
        "use a duration such as 5m, or 0s to revalidate on every task",
    );

    let server_root_url = ov
        .server_root_url
        .clone()
        .or_else(|| cp.server_root_url.as_ref().map(|s| s.value.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER_ROOT_URL.to_string());
    if !server_root_url.is_empty() && url::Url::parse(&server_root_url).is_err() {
        c.at(
            "control_plane.server_root_url",
            cp.server_root_url.as_ref(),
            format!("{server_root_url:?} is not a URL"),
            "use e.g. https://app.warp.dev, or \"\" to pass none",
        );
    }

    let (api_key, api_key_source) = api_key_of(&cp, ov, c);

    let path_opt = |s: &Option<Spanned<String>>| s.as_ref().map(|s| PathBuf::from(&s.value));
    let ca_file = path_opt(&cp.ca_file);
    let client_cert_file = path_opt(&cp.client_cert_file);
    let client_key_file = path_opt(&cp.client_key_file);
    for (key, spanned) in [
        ("control_plane.ca_file", &cp.ca_file),
        ("control_plane.client_cert_file", &cp.client_cert_file),
        ("control_plane.client_key_file", &cp.client_key_file),
    ] {
        if let Some(s) = spanned
            && let Err(e) = std::fs::metadata(&s.value)
        {
            c.at(
                key,
                Some(s),
                format!("cannot read {}: {e}", s.value),
                "point it at a readable PEM file",
            );
        }
    }
    if client_cert_file.is_some() != client_key_file.is_some() {
        c.at::<String>(
            "control_plane.client_cert_file",
            cp.client_cert_file.as_ref().or(cp.client_key_file.as_ref()),
            "client_cert_file and client_key_file must be set together".into(),
            "set both for mTLS, or neither",
        );
    }

    let heartbeat_interval = c.duration_min(
        "control_plane.heartbeat_interval",
        cp.heartbeat_interval.as_ref(),
        DEFAULT_HEARTBEAT,
        Duration::from_secs(1),
        "use a duration such as 30s, 5m or 1h30m",
    );
    let max_message_size = match &cp.max_message_size {
        None => DEFAULT_MAX_MESSAGE,
        Some(s) => match parse_size(&s.value) {
            Ok(n) if (64 << 10..=1 << 30).contains(&n) => n,
            Ok(n) => {
                c.at(
                    "control_plane.max_message_size",
                    Some(s),
                    format!("{n} bytes is outside 64KiB..1GiB"),
                    "use a value such as 16MiB",
                );
                DEFAULT_MAX_MESSAGE
            }
            Err(p) => {
                c.at(
                    "control_plane.max_message_size",
                    Some(s),
                    p,
                    "use e.g. 16MiB",
                );
                DEFAULT_MAX_MESSAGE
            }
        },
    };
    Some(ControlPlane {
        url: url?,
        server_root_url,
        api_key,
        api_key_source,
        ca_file,
        client_cert_file,
        client_key_file,
        allow_insecure,
        heartbeat_interval,
        max_message_size,
        session_sharing_server_url: cp.session_sharing_server_url.map(|s| s.value),
        environments_url,
        environments_ttl,
        status_interval,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{load_yaml, one_error, with_key};
    use super::*;

    #[test]
    fn the_key_url_rule_wants_tls_off_loopback_unless_insecure_is_allowed() {
        use KeyTransport::{Http, WebSocket};
        let check = |text: &str, transport, insecure| {
            let url = url::Url::parse(text).unwrap();
            check_key_url(&url, text, transport, insecure).map_err(|(problem, _)| problem)
        };
        for (text, transport) in [
            ("wss://cp.example.com/ws", WebSocket),
            ("ws://127.0.0.1:9/ws", WebSocket),
            ("ws://127.1.2.3/ws", WebSocket),
            ("ws://LocalHost/ws", WebSocket),
            ("ws://[::1]:9/ws", WebSocket),
            ("https://cp.example.com/e/{id}", Http),
            ("http://localhost:9/e/{id}", Http),
            ("http://[::1]/e/{id}", Http),
        ] {
            assert_eq!(check(text, transport, false), Ok(()), "{text}");
        }
        for (text, transport, needle) in [
            ("ws://10.0.0.1/ws", WebSocket, "unencrypted"),
            ("ws://localhost.example.com/ws", WebSocket, "unencrypted"),
            ("http://cp.example.com/e/{id}", Http, "unencrypted"),
            (
                "https://cp.example.com/ws",
                WebSocket,
                "not a WebSocket URL",
            ),
            ("wss://cp.example.com/e/{id}", Http, "not HTTP"),
            ("ftp://cp.example.com/{id}", Http, "not HTTP"),
        ] {
            let problem = check(text, transport, false).unwrap_err();
            assert!(problem.contains(needle), "{text}: {problem}");
        }
        // allow_insecure lets the plain scheme anywhere, never a foreign one.
        assert_eq!(check("ws://10.0.0.1/ws", WebSocket, true), Ok(()));
        assert_eq!(check("http://cp.example.com/e/{id}", Http, true), Ok(()));
        assert!(check("ftp://cp.example.com/{id}", Http, true).is_err());
        assert!(check("http://cp.example.com/ws", WebSocket, true).is_err());
    }

    #[test]
    fn the_environments_api_url_needs_an_id_placeholder_and_https_off_loopback() {
        let c = load_yaml(
            "worker_id: w\ncontrol_plane:\n  environments_url: https://cp.example.com/api/v1/environments/{id}\n  environments_ttl: 90s\n",
            &with_key(),
        )
        .unwrap();
        assert_eq!(
            c.control_plane.environments_url.as_deref(),
            Some("https://cp.example.com/api/v1/environments/{id}")
        );
        assert_eq!(c.control_plane.environments_ttl, Duration::from_secs(90));
        let d = load_yaml("worker_id: w\n", &with_key()).unwrap();
        assert_eq!(
            (
                d.control_plane.environments_url,
                d.control_plane.environments_ttl
            ),
            (None, Duration::from_secs(300))
        );
        for (yaml, needle) in [
            ("https://cp/envs/", "no {id}"),
            ("http://cp.example.com/e/{id}", "unencrypted"),
            ("ftp://cp/{id}", "not HTTP"),
            ("not a url {id}", "not a URL"),
        ] {
            let e = one_error(&format!(
                "worker_id: w\ncontrol_plane:\n  environments_url: \"{yaml}\"\n"
            ));
            assert_eq!(
                (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
                ("control_plane.environments_url", Some(3))
            );
            assert!(e.problem.contains(needle), "{yaml}: {}", e.problem);
        }
        assert!(
            load_yaml(
                "worker_id: w\ncontrol_plane:\n  environments_url: http://127.0.0.1:9/e/{id}\n",
                &with_key()
            )
            .is_ok()
        );
        let e = one_error("worker_id: w\ncontrol_plane:\n  environments_ttl: soon\n");
        assert_eq!(e.key, "control_plane.environments_ttl");
    }

    #[test]
    fn plain_ws_is_allowed_to_loopback_or_when_insecure_is_set() {
        for url in [
            "ws://127.0.0.1:1/ws",
            "ws://localhost/ws",
            "ws://[::1]:9/ws",
        ] {
            let y = format!("worker_id: w\ncontrol_plane:\n  url: {url}\n");
            assert!(load_yaml(&y, &with_key()).is_ok(), "{url}");
        }
        let y = "worker_id: w\ncontrol_plane:\n  url: ws://10.0.0.1/ws\n  allow_insecure: true\n";
        assert!(load_yaml(y, &with_key()).is_ok());
    }
}
