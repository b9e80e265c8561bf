//! Redaction of secrets from berth's own log, whatever the level or format.
//!
//! Filters cannot be trusted to keep secrets out: at `debug` the Docker client prints container
//! bodies with task env values, at `trace` the WebSocket stack prints headers and frames. So
//! the log writer itself replaces every registered secret — the API key and each running
//! task's secrets, the same set the transcript redactor uses — in every line it writes, raw or
//! escaped the way JSON and Rust's `Debug` print it.

use parking_lot::{Mutex, MutexGuard};
use std::io::Write;

/// What replaces a secret.
const MARK: &[u8] = b"[REDACTED]";

/// Registered secrets with how many holders each has.
static SECRETS: Mutex<Vec<(Vec<u8>, usize)>> = Mutex::new(Vec::new());

fn secrets() -> MutexGuard<'static, Vec<(Vec<u8>, usize)>> {
    SECRETS.lock()
}

/// The forms in which `secret` can appear in a log line: as is, and escaped as JSON strings and
/// Rust's `Debug` escape it (quote, backslash, control characters).
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut escaped = Vec::with_capacity(secret.len() + 4);
    for &b in secret {
        match b {
            b'"' => escaped.extend_from_slice(b"\\\""),
            b'\\' => escaped.extend_from_slice(b"\\\\"),
            b'\n' => escaped.extend_from_slice(b"\\n"),
            b'\r' => escaped.extend_from_slice(b"\\r"),
            b'\t' => escaped.extend_from_slice(b"\\t"),
            _ => escaped.push(b),
        }
    }
    let mut v = vec![secret.to_vec()];
    if escaped != secret {
        v.push(escaped);
    }
    v
}

/// Keeps secrets registered while it lives.
#[derive(Debug)]
pub struct Registered(Vec<Vec<u8>>);

impl Drop for Registered {
    fn drop(&mut self) {
        let mut s = secrets();
        for f in &self.0 {
            if let Some(i) = s.iter().position(|(v, _)| v == f) {
                s[i].1 -= 1;
                if s[i].1 == 0 {
                    s.swap_remove(i);
                }
            }
        }
    }
}

/// Registers secrets (empty ones are ignored) until the returned guard is dropped.
pub fn register(values: impl IntoIterator<Item = Vec<u8>>) -> Registered {
    let mut all: Vec<Vec<u8>> = values
        .into_iter()
        .filter(|v| !v.is_empty())
        .flat_map(|v| forms(&v))
        .collect();
    all.sort();
    all.dedup();
    let mut s = secrets();
    for f in &all {
        match s.iter_mut().find(|(v, _)| v == f) {
            Some((_, n)) => *n += 1,
            None => s.push((f.clone(), 1)),
        }
    }
    // Longest first, so a secret containing another is replaced whole.
    s.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    Registered(all)
}

/// `line` with every registered secret replaced; `None` when it holds none.
pub fn scrub(line: &[u8]) -> Option<Vec<u8>> {
    let s = secrets();
    let mut out: Option<Vec<u8>> = None;
    for (secret, _) in s.iter() {
        let cur = out.as_deref().unwrap_or(line);
        if let Some(replaced) = replace_all(cur, secret) {
            out = Some(replaced);
        }
    }
    out
}

fn replace_all(hay: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let mut out: Option<Vec<u8>> = None;
    let mut last = 0;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            let o = out.get_or_insert_with(|| Vec::with_capacity(hay.len()));
            o.extend_from_slice(&hay[last..i]);
            o.extend_from_slice(MARK);
            i += needle.len();
            last = i;
        } else {
            i += 1;
        }
    }
    let mut o = out?;
    o.extend_from_slice(&hay[last..]);
    Some(o)
}

/// A log writer for `tracing_subscriber::fmt` that scrubs each event (one write per event)
/// before it reaches stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrubbedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ScrubbedStderr {
    type Writer = ScrubbedStderr;
    fn make_writer(&'a self) -> Self::Writer {
        ScrubbedStderr
    }
}

impl Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        match scrub(buf) {
            Some(clean) => err.write_all(&clean)?,
            None => err.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `url` for display: a password in its userinfo (`ws://user:pass@host`) becomes
/// `[REDACTED]`; anything that is not a URL is returned as is.
pub fn display_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            if u.set_password(Some("[REDACTED]")).is_err() {
                return "[URL with a password, REDACTED]".into();
            }
            // Parsing percent-encodes the brackets and an `{id}` template: show them plainly.
            u.to_string()
                .replacen("%5BREDACTED%5D", "[REDACTED]", 1)
                .replace("%7Bid%7D", "{id}")
        }
        _ => url.to_string(),
    }
}

/// The password of `url`'s userinfo, if any (registered as a secret for the log).
pub fn url_password(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let p = u.password()?;
    Some(percent_decode(p).unwrap_or_else(|| p.to_string()))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Log targets capped at `debug` whatever the filter: at `trace` they print raw WebSocket frames
/// (assignments with their env values arrive before berth knows those values are secrets).
pub const CAPPED_TARGETS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Whether an event of `target` at `level` is dropped by the cap on [`CAPPED_TARGETS`]
/// (applied as its own layer filter, so it only ever removes lines, whatever the operator's
/// filter says).
pub fn capped(target: &str, level: &tracing::Level) -> bool {
    *level == tracing::Level::TRACE
        && CAPPED_TARGETS
            .iter()
            .any(|t| target == *t || target.starts_with(&format!("{t}::")))
}

/// The filter for the operator's `log.level`. A bare level (`info`, `debug`, …) is berth's
/// level; other crates log at `warn` (or the bare level when it is quieter), so a newcomer
/// reads berth's story, not a dependency's handshakes. A filter with directives (`info,
/// hyper=debug`) is used as written: that is how other crates' lines are asked for. An
/// unparsable filter falls back to `info` (config validation rejects it before).
pub fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_new(filter_directives(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter_directives("info")))
}

/// The directives [`log_filter`] builds (pure).
pub fn filter_directives(level: &str) -> String {
    use tracing_subscriber::filter::LevelFilter;
    let trimmed = level.trim();
    match trimmed.parse::<LevelFilter>() {
        Ok(l) if !trimmed.contains([',', '=']) => {
            let others = l.min(LevelFilter::WARN);
            format!("{},berth={}", others, l).to_ascii_lowercase()
        }
        _ => trimmed.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the registry is process-wide.
    #[test]
    fn registered_secrets_are_scrubbed_raw_and_escaped_until_released() {
        let line = br#"env=["TOKEN=abc\"def"] key=k3y-value again k3y-value"#;
        assert_eq!(scrub(line), None);
        let a = register([b"abc\"def".to_vec(), b"k3y-value".to_vec(), Vec::new()]);
        let b = register([b"k3y-value".to_vec()]);
        let out = scrub(line).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"env=["TOKEN=[REDACTED]"] key=[REDACTED] again [REDACTED]"#
        );
        assert_eq!(
            scrub(b"raw abc\"def").as_deref(),
            Some(&b"raw [REDACTED]"[..])
        );
        drop(a);
        // Still held by `b`.
        assert_eq!(scrub(b"k3y-value").as_deref(), Some(&b"[REDACTED]"[..]));
        assert_eq!(scrub(b"abc\"def"), None);
        drop(b);
        assert_eq!(scrub(b"k3y-value"), None);
        // A secret inside a longer one: the longer is replaced whole.
        let _c = register([b"secret".to_vec(), b"topsecretvalue".to_vec()]);
        assert_eq!(
            scrub(b"x topsecretvalue secret").as_deref(),
            Some(&b"x [REDACTED] [REDACTED]"[..])
        );
    }

    #[test]
    fn url_passwords_are_never_displayed() {
        assert_eq!(
            display_url("ws://user:pa55word@cp.example:8080/ws?x=1"),
            "ws://user:[REDACTED]@cp.example:8080/ws?x=1"
        );
        assert_eq!(display_url("wss://cp.example/ws"), "wss://cp.example/ws");
        assert_eq!(
            display_url("https://u:p@cp.example/env/{id}"),
            "https://u:[REDACTED]@cp.example/env/{id}"
        );
        assert_eq!(display_url("not a url"), "not a url");
        assert_eq!(url_password("ws://u:p%40ss@h/").as_deref(), Some("p@ss"));
        assert_eq!(url_password("ws://u:plain@h/").as_deref(), Some("plain"));
        assert_eq!(url_password("ws://h/"), None);
    }

    #[test]
    fn the_websocket_stack_is_capped_below_trace() {
        use tracing::Level;
        assert!(capped("tungstenite::protocol", &Level::TRACE));
        assert!(capped("tokio_tungstenite", &Level::TRACE));
        assert!(!capped("tungstenite::protocol", &Level::DEBUG));
        assert!(!capped("tungstenite_other", &Level::TRACE));
        assert!(!capped("berth", &Level::TRACE));
    }

    #[test]
    fn a_bare_level_is_berths_and_other_crates_stay_at_warn() {
        for (level, want) in [
            ("info", "warn,berth=info"),
            ("debug", "warn,berth=debug"),
            ("trace", "warn,berth=trace"),
            ("warn", "warn,berth=warn"),
            ("error", "error,berth=error"),
            ("off", "off,berth=off"),
            (" INFO ", "warn,berth=info"),
            // Directives are the operator asking: used as written.
            ("info,hyper=debug", "info,hyper=debug"),
            ("berth=debug", "berth=debug"),
            ("tungstenite=trace,info", "tungstenite=trace,info"),
        ] {
            assert_eq!(filter_directives(level), want, "{level:?}");
        }
        // The filter built from it parses (and a broken one falls back to berth at info).
        assert_eq!(log_filter("debug").to_string(), "berth=debug,warn");
        assert_eq!(log_filter("[[").to_string(), "berth=info,warn");
    }
}
