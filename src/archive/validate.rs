//! The owner's checks of a request, in PROTOCOL §8.4's order (the first failing check decides
//! the reason), before any read or network call. Pure: the payload and the time of receipt in,
//! a typed request or a reason out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::reason::Reason;

/// The one format berth writes.
pub const FORMAT: &str = "application/x-ndjson";
/// Largest `max_bytes` a request may ask for (64 MiB).
pub const MAX_OBJECT_BYTES: u64 = 64 << 20;
/// How far in the future `expires_at` may lie.
const MAX_LIFETIME: chrono::Duration = chrono::Duration::minutes(30);

/// The five ids every answer echoes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    pub request_id: String,
    pub archive_id: String,
    pub collection_id: String,
    pub run_id: String,
    pub execution_id: String,
}

impl Ids {
    /// The ids as sent (a missing or non-string id echoes as empty).
    pub fn echo(data: &Value) -> Ids {
        let s = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ids {
            request_id: s("request_id"),
            archive_id: s("archive_id"),
            collection_id: s("collection_id"),
            run_id: s("run_id"),
            execution_id: s("execution_id"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.request_id,
            &self.archive_id,
            &self.collection_id,
            &self.run_id,
            &self.execution_id,
        ]
    }
}

/// How the object is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The object is the body.
    Put,
    /// `multipart/form-data`: fields, then the file part.
    Post,
}

impl Method {
    /// HTTP spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Put => "PUT",
            Method::Post => "POST",
        }
    }
}

/// Where the object goes. Its URL, headers and fields carry credentials: no `Debug` that
/// prints them, and nothing here is ever logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub url: url::Url,
    pub method: Method,
    /// Applied in key order.
    pub headers: BTreeMap<String, String>,
    /// Sent in key order before the file part (POST only).
    pub fields: BTreeMap<String, String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({} <redacted>)", self.method.as_str())
    }
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valid {
    pub ids: Ids,
    pub expires_at: DateTime<Utc>,
    pub max_bytes: u64,
    pub target: Target,
}

impl Valid {
    /// What two requests under one `request_id` must share to be the same request (§8.4:
    /// ids, format, expiry, transformer, `max_bytes`, method and URL), as a digest, so the
    /// cache never keeps a URL.
    pub fn fingerprint(&self) -> [u8; 32] {
        let i = &self.ids;
        let text = [
            i.archive_id.as_str(),
            &i.collection_id,
            &i.run_id,
            &i.execution_id,
            FORMAT,
            &self.expires_at.to_rfc3339(),
            "noop/1",
            &self.max_bytes.to_string(),
            self.target.method.as_str(),
            self.target.url.as_str(),
        ]
        .join("\u{0}");
        let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// A control character: below U+0020, or U+007F.
pub fn has_control(s: &str) -> bool {
    s.chars().any(|c| c < ' ' || c == '\u{7f}')
}

fn check(ok: bool, reason: Reason) -> Result<(), Reason> {
    if ok { Ok(()) } else { Err(reason) }
}

/// Checks `data` received at `now`, in §8.4's order.
pub fn validate(data: &Value, now: DateTime<Utc>) -> Result<Valid, Reason> {
    use Reason::*;
    check(
        data.get("protocol_version").and_then(Value::as_u64) == Some(1),
        UnsupportedProtocolVersion,
    )?;
    let ids = Ids::echo(data);
    let present = [
        "request_id",
        "archive_id",
        "collection_id",
        "run_id",
        "execution_id",
    ]
    .iter()
    .all(|k| data.get(k).is_some_and(Value::is_string));
    check(
        present
            && ids
                .all()
                .iter()
                .all(|id| !id.trim().is_empty() && !has_control(id)),
        InvalidRequest,
    )?;
    check(
        data.get("requested_format").and_then(Value::as_str) == Some(FORMAT),
        InvalidRequest,
    )?;
    let expires_at = data
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or(InvalidRequest)?;
    check(expires_at > now, RequestExpired)?;
    check(expires_at <= now + MAX_LIFETIME, InvalidRequest)?;
    let t = data.get("content_transformer");
    check(
        t.and_then(|t| t.get("kind")).and_then(Value::as_str) == Some("noop")
            && t.and_then(|t| t.get("version")).and_then(Value::as_u64) == Some(1),
        UnsupportedContentTransformer,
    )?;
    let max_bytes = data
        .get("max_bytes")
        .and_then(Value::as_u64)
        .filter(|n| (1..=MAX_OBJECT_BYTES).contains(n))
        .ok_or(InvalidRequest)?;
    let target = data.get("upload_target").ok_or(InvalidRequest)?;
    let target = upload_target(target)?;
    Ok(Valid {
        ids,
        expires_at,
        max_bytes,
        target,
    })
}

/// A JSON object of strings (absent: empty); anything else is invalid.
fn string_map(v: Option<&Value>) -> Result<BTreeMap<String, String>, Reason> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(Reason::InvalidRequest),
            })
            .collect(),
        Some(_) => Err(Reason::InvalidRequest),
    }
}

/// The method / fields rule, then the URL, then the header and field texts (§8.4's order).
fn upload_target(v: &Value) -> Result<Target, Reason> {
    use Reason::InvalidRequest;
    let headers = string_map(v.get("headers"));
    let fields = string_map(v.get("multipart_fields"));
    let field_count = match v.get("multipart_fields") {
        Some(Value::Object(m)) => m.len(),
        _ => 0,
    };
    let method = match v.get("method").and_then(Value::as_str) {
        Some("PUT") if field_count == 0 => Method::Put,
        Some("POST") if field_count > 0 => Method::Post,
        _ => return Err(InvalidRequest),
    };
    let url = v
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !has_control(u))
        .and_then(|u| url::Url::parse(u).ok())
        .filter(allowed_url)
        .ok_or(InvalidRequest)?;
    let (headers, fields) = (headers?, fields?);
    let clean =
        |m: &BTreeMap<String, String>| m.iter().all(|(k, v)| !has_control(k) && !has_control(v));
    // A header name HTTP cannot carry could never be sent: the same answer as a control
    // character, at once, rather than retries until expiry.
    let sendable = headers
        .keys()
        .all(|k| reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok());
    check(
        clean(&headers) && clean(&fields) && sendable,
        InvalidRequest,
    )?;
    Ok(Target {
        url,
        method,
        headers,
        fields,
    })
}

/// `https` with a host, or plain `http` to this machine only.
pub fn allowed_url(u: &url::Url) -> bool {
    use url::Host;
    match (u.scheme(), u.host()) {
        ("https", Some(Host::Domain(d))) => !d.is_empty(),
        ("https", Some(_)) => true,
        ("http", Some(Host::Domain(d))) => d.eq_ignore_ascii_case("localhost"),
        ("http", Some(Host::Ipv4(a))) => a.octets()[0] == 127,
        ("http", Some(Host::Ipv6(a))) => a == std::net::Ipv6Addr::LOCALHOST,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-09-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn good() -> Value {
        json!({"protocol_version": 1, "request_id": "r", "archive_id": "a", "collection_id": "c",
               "run_id": "t", "execution_id": "e", "requested_format": FORMAT,
               "expires_at": "2026-09-01T12:10:00Z", "max_bytes": 1024,
               "content_transformer": {"kind": "noop", "version": 1},
               "upload_target": {"url": "https://up.example/o?sig=x", "method": "PUT",
                                 "headers": {"x-b": "2", "x-a": "1"}},
               "surprise": {"ignored": true}})
    }

    fn with(path: &[&str], v: Value) -> Value {
        let mut d = good();
        let mut at = &mut d;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        match v {
            Value::Null => {
                if let Some(o) = at.as_object_mut() {
                    o.remove(path[path.len() - 1]);
                }
            }
            v => at[path[path.len() - 1]] = v,
        }
        d
    }

    #[test]
    fn a_good_request_is_typed_with_headers_in_key_order() {
        let v = validate(&good(), now()).unwrap();
        assert_eq!(v.ids.request_id, "r");
        assert_eq!(v.max_bytes, 1024);
        assert_eq!(v.target.method, Method::Put);
        let keys: Vec<&String> = v.target.headers.keys().collect();
        assert_eq!(keys, ["x-a", "x-b"]);
        assert!(
            !format!("{v:?}").contains("sig=x"),
            "Debug must not print the URL"
        );
    }

    #[test]
    fn each_check_fails_with_its_reason() {
        use Reason::*;
        let long = "2026-09-01T12:30:01Z";
        let cases: Vec<(Value, Reason)> = vec![
            (
                with(&["protocol_version"], json!(2)),
                UnsupportedProtocolVersion,
            ),
            (
                with(&["protocol_version"], Value::Null),
                UnsupportedProtocolVersion,
            ),
            (
                with(&["protocol_version"], json!("1")),
                UnsupportedProtocolVersion,
            ),
            (with(&["request_id"], json!("  ")), InvalidRequest),
            (with(&["archive_id"], Value::Null), InvalidRequest),
            (with(&["collection_id"], json!(7)), InvalidRequest),
            (with(&["run_id"], json!("a\u{7f}")), InvalidRequest),
            (with(&["execution_id"], json!("a\nb")), InvalidRequest),
            (
                with(&["requested_format"], json!("text/plain")),
                InvalidRequest,
            ),
            (with(&["expires_at"], Value::Null), InvalidRequest),
            (with(&["expires_at"], json!("tomorrow")), InvalidRequest),
            (
                with(&["expires_at"], json!("2026-09-01T12:00:00Z")),
                RequestExpired,
            ),
            (with(&["expires_at"], json!(long)), InvalidRequest),
            (
                with(&["content_transformer", "kind"], json!("gzip")),
                UnsupportedContentTransformer,
            ),
            (
                with(&["content_transformer", "version"], json!(2)),
                UnsupportedContentTransformer,
            ),
            (
                with(&["content_transformer"], Value::Null),
                UnsupportedContentTransformer,
            ),
            (with(&["max_bytes"], json!(0)), InvalidRequest),
            (with(&["max_bytes"], json!(-1)), InvalidRequest),
            (with(&["max_bytes"], json!((64 << 20) + 1)), InvalidRequest),
            (
                with(&["upload_target", "method"], json!("POST")),
                InvalidRequest,
            ),
            (
                with(&["upload_target", "method"], json!("GET")),
                InvalidRequest,
            ),
            (
                with(&["upload_target", "multipart_fields"], json!({"k": "v"})),
                InvalidRequest,
            ),
            (
                with(&["upload_target", "url"], json!("http://up.example/o")),
                InvalidRequest,
            ),
            (
                with(&["upload_target", "url"], json!("https://up.example/\to")),
                InvalidRequest,
            ),
            (
                with(&["upload_target", "url"], json!("not a url")),
                InvalidRequest,
            ),
            (
                with(&["upload_target", "url"], json!("ftp://up.example/o")),
                InvalidRequest,
            ),
            (
                with(&["upload_target", "headers"], json!({"x": "a\r\nb"})),
                InvalidRequest,
            ),
            (
                with(&["upload_target", "headers"], json!({"x\u{1}": "a"})),
                InvalidRequest,
            ),
            (
                with(&["upload_target", "headers"], json!({"x": 1})),
                InvalidRequest,
            ),
            (with(&["upload_target"], Value::Null), InvalidRequest),
        ];
        for (i, (data, want)) in cases.into_iter().enumerate() {
            assert_eq!(validate(&data, now()).err(), Some(want), "case {i}: {data}");
        }
    }

    #[test]
    fn the_first_failing_check_decides() {
        // Wrong version and everything else wrong too: the version wins.
        let d = json!({"protocol_version": 3, "max_bytes": 0});
        assert_eq!(
            validate(&d, now()).err(),
            Some(Reason::UnsupportedProtocolVersion)
        );
        // Expired and a bad transformer: expiry comes first.
        let d = with(&["expires_at"], json!("2026-09-01T11:00:00Z"));
        let mut d2 = d.clone();
        d2["content_transformer"]["kind"] = json!("gzip");
        assert_eq!(validate(&d2, now()).err(), Some(Reason::RequestExpired));
        // A bad transformer before bad bounds.
        let mut d3 = with(&["max_bytes"], json!(0));
        d3["content_transformer"]["version"] = json!(9);
        assert_eq!(
            validate(&d3, now()).err(),
            Some(Reason::UnsupportedContentTransformer)
        );
        // Bad bounds before a bad URL.
        let mut d4 = with(&["max_bytes"], json!(0));
        d4["upload_target"]["url"] = json!("ftp://x");
        assert_eq!(validate(&d4, now()).err(), Some(Reason::InvalidRequest));
    }

    #[test]
    fn post_needs_fields_and_loopback_http_is_allowed() {
        let mut d = good();
        d["upload_target"] = json!({"url": "http://127.0.0.1:9/u", "method": "POST",
                                    "multipart_fields": {"key": "k", "acl": "x"}});
        let v = validate(&d, now()).unwrap();
        assert_eq!(v.target.method, Method::Post);
        assert_eq!(v.target.fields.keys().collect::<Vec<_>>(), ["acl", "key"]);
        for (u, ok) in [
            ("http://localhost:8/u", true),
            ("http://127.3.4.5/u", true),
            ("http://[::1]:9/u", true),
            ("http://10.0.0.1/u", false),
            ("http://localhost.example/u", false),
            ("https://10.0.0.1/u", true),
            ("file:///etc/passwd", false),
        ] {
            let parsed = url::Url::parse(u).ok();
            assert_eq!(parsed.as_ref().is_some_and(allowed_url), ok, "{u}");
        }
    }

    #[test]
    fn fingerprints_differ_on_the_compared_fields_only() {
        let a = validate(&good(), now()).unwrap();
        let same = validate(&with(&["surprise"], json!(2)), now()).unwrap();
        assert_eq!(a.fingerprint(), same.fingerprint());
        let other_headers =
            validate(&with(&["upload_target", "headers"], json!({})), now()).unwrap();
        assert_eq!(a.fingerprint(), other_headers.fingerprint());
        for (path, v) in [
            (vec!["archive_id"], json!("a2")),
            (vec!["max_bytes"], json!(2048)),
            (vec!["expires_at"], json!("2026-09-01T12:11:00Z")),
            (
                vec!["upload_target", "url"],
                json!("https://up.example/other"),
            ),
        ] {
            let b = validate(&with(&path, v), now()).unwrap();
            assert_ne!(a.fingerprint(), b.fingerprint(), "{path:?}");
        }
    }
}
