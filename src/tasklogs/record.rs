//! What is exported (PROTOCOL §8.3): one record per container output line, per berth `system`
//! line and per setup phase, each redacted whole (body, attribute keys and values) and never
//! larger than 16 KiB; plus the execution's resource attributes.

use chrono::{DateTime, SecondsFormat, Utc};

use super::redaction::{MARK, Redactor};
use crate::control::setup_events::Timed;

/// A record whose redacted body and attributes exceed this becomes `[REDACTED]` alone.
pub const MAX_RECORD: usize = 16 << 10;
/// The instrumentation scope of every record.
pub const SCOPE: &str = "oz-agent-worker.task";
/// `service.name`, kept for dashboard compatibility with the Go worker.
pub const SERVICE_NAME: &str = "oz-agent-worker";

/// An attribute value (the OTLP `AnyValue` kinds berth sends).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Double(f64),
}

impl Value {
    /// Bytes it counts for toward [`MAX_RECORD`].
    fn size(&self) -> usize {
        match self {
            Value::Str(s) => s.len(),
            Value::Bool(_) => 1,
            Value::Double(_) => 8,
        }
    }
}

/// One attribute.
pub type Attr = (String, Value);

/// OTLP severities, with their numbers and level names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Severity {
    /// `SeverityNumber` and the level name sent as severity text.
    pub fn wire(self) -> (i32, &'static str) {
        const TABLE: [(Severity, i32, &str); 6] = [
            (Severity::Trace, 1, "TRACE"),
            (Severity::Debug, 5, "DEBUG"),
            (Severity::Info, 9, "INFO"),
            (Severity::Warn, 13, "WARN"),
            (Severity::Error, 17, "ERROR"),
            (Severity::Fatal, 21, "FATAL"),
        ];
        TABLE
            .iter()
            .find(|(s, _, _)| *s == self)
            .map_or((9, "INFO"), |(_, n, t)| (*n, *t))
    }
}

/// One exported log record, already redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub severity: Severity,
    pub body: String,
    pub attributes: Vec<Attr>,
    /// Spool offset of the line it came from (`None` for setup phases).
    pub at: Option<u64>,
}

/// Which output stream a container line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Output {
    Stdout,
    Stderr,
}

impl Output {
    /// `log.source` and `log.iostream`.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Output::Stdout => ("container.stdout", "stdout"),
            Output::Stderr => ("container.stderr", "stderr"),
        }
    }
}

fn str_attr(k: &str, v: &str) -> Attr {
    (k.to_string(), Value::Str(v.to_string()))
}

/// Nanoseconds since the epoch of `t` (0 before it).
pub fn nanos(t: DateTime<Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or(0).max(0) as u64
}

/// A line of container output.
pub fn container_line(
    out: Output,
    line: &[u8],
    at: u64,
    container_name: Option<&str>,
    now: DateTime<Utc>,
    red: &Redactor,
) -> Record {
    let (source, iostream) = out.names();
    let mut attributes = vec![
        str_attr("log.source", source),
        str_attr("log.iostream", iostream),
    ];
    if let Some(n) = container_name
        .map(|n| n.trim_start_matches('/'))
        .filter(|n| !n.is_empty())
    {
        attributes.push(str_attr("container.name", n));
    }
    seal(
        Record {
            time_ns: nanos(now),
            severity: Severity::Info,
            body: String::from_utf8_lossy(&red.redact(line)).into_owned(),
            attributes,
            at: Some(at),
        },
        red,
    )
}

/// One of berth's own `system` lines about the execution (its `[berth] ` prefix removed).
pub fn worker_line(line: &[u8], at: u64, now: DateTime<Utc>, red: &Redactor) -> Record {
    let text = line.strip_prefix(b"[berth] ").unwrap_or(line);
    seal(
        Record {
            time_ns: nanos(now),
            severity: Severity::Info,
            body: String::from_utf8_lossy(&red.redact(text)).into_owned(),
            attributes: vec![str_attr("log.source", "worker")],
            at: Some(at),
        },
        red,
    )
}

/// A setup phase (PROTOCOL §7) as a record.
pub fn setup_phase(t: &Timed, red: &Redactor) -> Record {
    let ts = |d: &DateTime<Utc>| d.to_rfc3339_opts(SecondsFormat::Millis, true);
    let latency = (t.finish - t.start).num_microseconds().unwrap_or(0).max(0) as f64 / 1000.0;
    seal(
        Record {
            time_ns: nanos(t.finish),
            severity: Severity::Info,
            body: red.redact_str(t.name),
            attributes: vec![
                str_attr("event.name", t.name),
                str_attr("start_ts", &ts(&t.start)),
                str_attr("finish_ts", &ts(&t.finish)),
                ("latency_ms".to_string(), Value::Double(latency)),
                ("is_error".to_string(), Value::Bool(t.is_error)),
            ],
            at: None,
        },
        red,
    )
}

/// Bytes of the body and attributes together.
pub fn size(r: &Record) -> usize {
    r.body.len()
        + r.attributes
            .iter()
            .map(|(k, v)| k.len() + v.size())
            .sum::<usize>()
}

/// Redacts attribute keys and string values (the body is redacted by its builder) and fails
/// closed: in blanket mode, or past [`MAX_RECORD`], the body is `[REDACTED]` with no
/// attributes. Never truncated.
fn seal(mut r: Record, red: &Redactor) -> Record {
    for (k, v) in &mut r.attributes {
        *k = red.redact_str(k);
        if let Value::Str(s) = v {
            *s = red.redact_str(s);
        }
    }
    if red.is_blanket() || size(&r) > MAX_RECORD {
        r.body = MARK.to_string();
        r.attributes.clear();
    }
    r
}

/// The execution's resource: who exported it and for which run and execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub worker_id: String,
    /// `worker.backend`: the backend's protocol name (`docker`).
    pub backend: String,
    pub run_id: String,
    pub execution_id: String,
}

impl Resource {
    /// Its attributes, redacted like everything exported.
    pub fn attributes(&self, red: &Redactor) -> Vec<Attr> {
        [
            ("service.name", SERVICE_NAME),
            ("worker.id", self.worker_id.as_str()),
            ("worker.backend", self.backend.as_str()),
            ("run_id", self.run_id.as_str()),
            ("execution_id", self.execution_id.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (red.redact_str(k), Value::Str(red.redact_str(v))))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(r: &Record) -> Vec<(&str, String)> {
        r.attributes
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Str(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Double(d) => d.to_string(),
                };
                (k.as_str(), v)
            })
            .collect()
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_container_line_has_its_stream_and_container_name() {
        let red = Redactor::new(["s3"]);
        let r = container_line(Output::Stderr, b"err s3", 7, Some("/box-1"), now(), &red);
        assert_eq!(r.body, "err [REDACTED]");
        assert_eq!(r.severity, Severity::Info);
        assert_eq!(r.at, Some(7));
        assert_eq!(r.time_ns, 1_796_551_200_000_000_000);
        assert_eq!(
            attrs(&r),
            vec![
                ("log.source", "container.stderr".to_string()),
                ("log.iostream", "stderr".to_string()),
                ("container.name", "box-1".to_string()),
            ]
        );
        let r = container_line(Output::Stdout, b"out", 0, None, now(), &red);
        assert_eq!(attrs(&r).len(), 2, "no container.name when it is not known");
        assert_eq!(attrs(&r)[0].1, "container.stdout");
    }

    #[test]
    fn a_worker_line_loses_its_prefix_and_is_sourced_worker() {
        let red = Redactor::new(["zz"]);
        let r = worker_line(b"[berth] pulled image", 3, now(), &red);
        assert_eq!(r.body, "pulled image");
        assert_eq!(attrs(&r), vec![("log.source", "worker".to_string())]);
    }

    #[test]
    fn a_setup_phase_has_its_timings() {
        let t = Timed {
            name: "setup_worker_image_pull",
            start: now(),
            finish: now() + chrono::Duration::microseconds(1_500_250),
            is_error: true,
        };
        let r = setup_phase(&t, &Redactor::default());
        assert_eq!(r.body, "setup_worker_image_pull");
        assert_eq!(r.at, None);
        assert_eq!(
            attrs(&r),
            vec![
                ("event.name", "setup_worker_image_pull".to_string()),
                ("start_ts", "2026-12-06T10:00:00.000Z".to_string()),
                ("finish_ts", "2026-12-06T10:00:01.500Z".to_string()),
                ("latency_ms", "1500.25".to_string()),
                ("is_error", "true".to_string()),
            ]
        );
    }

    #[test]
    fn attribute_keys_and_values_are_redacted() {
        let red = Redactor::new(["box"]);
        let r = container_line(Output::Stdout, b"x", 0, Some("my-box"), now(), &red);
        assert_eq!(
            attrs(&r)[2],
            ("container.name", "my-[REDACTED]".to_string())
        );
        let red = Redactor::new(["source"]);
        let r = worker_line(b"x", 0, now(), &red);
        assert_eq!(r.attributes[0].0, "log.[REDACTED]");
    }

    #[test]
    fn a_record_over_16_kib_after_redaction_is_redacted_whole_not_cut() {
        let red = Redactor::default();
        // Body plus the attributes' bytes: exactly at the cap is kept.
        let attrs_len = "log.source".len() + "container.stdout".len() + "log.iostream".len() + 6;
        let fits = vec![b'a'; MAX_RECORD - attrs_len];
        let r = container_line(Output::Stdout, &fits, 0, None, now(), &red);
        assert_eq!(r.body.len(), fits.len());
        let over = vec![b'a'; MAX_RECORD - attrs_len + 1];
        let r = container_line(Output::Stdout, &over, 0, None, now(), &red);
        assert_eq!(r.body, MARK);
        assert!(r.attributes.is_empty());
        // Redaction can shrink a record under the cap: the size is taken after it.
        let secret = "s".repeat(MAX_RECORD);
        let red = Redactor::new([secret.as_str()]);
        let r = container_line(Output::Stdout, secret.as_bytes(), 0, None, now(), &red);
        assert_eq!(r.body, MARK);
        assert_eq!(r.attributes.len(), 2, "kept: it is small once redacted");
    }

    #[test]
    fn blanket_mode_sends_only_the_mark() {
        let big = "b".repeat(super::super::redaction::MAX_VALUE + 1);
        let red = Redactor::new([big.as_str()]);
        let r = container_line(Output::Stdout, b"hello", 0, Some("c"), now(), &red);
        assert_eq!((r.body.as_str(), r.attributes.len()), (MARK, 0));
        let r = worker_line(b"hello", 0, now(), &red);
        assert_eq!((r.body.as_str(), r.attributes.len()), (MARK, 0));
    }

    #[test]
    fn the_resource_names_worker_run_and_execution() {
        let res = Resource {
            worker_id: "w".into(),
            backend: "docker".into(),
            run_id: "t".into(),
            execution_id: "e".into(),
        };
        let a = res.attributes(&Redactor::default());
        let keys: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "service.name",
                "worker.id",
                "worker.backend",
                "run_id",
                "execution_id"
            ]
        );
        assert_eq!(a[0].1, Value::Str("oz-agent-worker".into()));
        assert_eq!(a[2].1, Value::Str("docker".into()));
    }

    #[test]
    fn severities_map_to_otlp_numbers_and_level_names() {
        let want = [
            (Severity::Trace, (1, "TRACE")),
            (Severity::Debug, (5, "DEBUG")),
            (Severity::Info, (9, "INFO")),
            (Severity::Warn, (13, "WARN")),
            (Severity::Error, (17, "ERROR")),
            (Severity::Fatal, (21, "FATAL")),
        ];
        for (s, w) in want {
            assert_eq!(s.wire(), w);
        }
    }
}
