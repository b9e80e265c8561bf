//! OTLP/HTTP protobuf encoding of an `ExportLogsServiceRequest`, written by hand.
//!
//! Why by hand: berth sends one message shape with a handful of fields (resource attributes,
//! one scope, records with a string body and string/bool/double attributes). The encoder is
//! about a hundred lines over four wire primitives, adds no dependency (the alternatives,
//! `opentelemetry-proto` or the OpenTelemetry SDK, bring `prost` and its derive macros, and
//! the SDK its own batching, which §8.3's redaction and spool-follower design would have to
//! work around). Its output is checked in tests by decoding it with `prost` types declared
//! from the official `.proto` field numbers (a dev-dependency only).
//!
//! Field numbers (opentelemetry/proto, logs v1 and common v1):
//! `ExportLogsServiceRequest{resource_logs=1}`, `ResourceLogs{resource=1, scope_logs=2}`,
//! `Resource{attributes=1}`, `ScopeLogs{scope=1, log_records=2}`,
//! `InstrumentationScope{name=1}`, `LogRecord{time_unix_nano=1 (fixed64),
//! severity_number=2, severity_text=3, body=5, attributes=6, observed_time_unix_nano=11
//! (fixed64)}`, `KeyValue{key=1, value=2}`,
//! `AnyValue{string_value=1, bool_value=2, double_value=4}`.

use super::record::{Attr, Record, SCOPE, Value};

/// Content type of the request body.
pub const CONTENT_TYPE: &str = "application/x-protobuf";

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn fixed64_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, VARINT);
    varint(out, v);
}

/// A nested message: written to a scratch buffer, then length-prefixed.
fn message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes_field(out, field, &inner);
}

fn any_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => bytes_field(out, 1, s.as_bytes()),
        Value::Bool(b) => varint_field(out, 2, u64::from(*b)),
        Value::Double(d) => fixed64_field(out, 4, d.to_bits()),
    }
}

fn key_value(out: &mut Vec<u8>, field: u32, (k, v): &Attr) {
    message(out, field, |m| {
        bytes_field(m, 1, k.as_bytes());
        message(m, 2, |a| any_value(a, v));
    });
}

fn log_record(out: &mut Vec<u8>, r: &Record) {
    let (number, text) = r.severity.wire();
    message(out, 2, |m| {
        fixed64_field(m, 1, r.time_ns);
        varint_field(m, 2, number as u64);
        bytes_field(m, 3, text.as_bytes());
        message(m, 5, |b| bytes_field(b, 1, r.body.as_bytes()));
        for a in &r.attributes {
            key_value(m, 6, a);
        }
        fixed64_field(m, 11, r.time_ns);
    });
}

/// The request body for one batch: one resource, one scope, `records` in order.
pub fn export_request(resource: &[Attr], records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, 1, |rl| {
        message(rl, 1, |res| {
            for a in resource {
                key_value(res, 1, a);
            }
        });
        message(rl, 2, |sl| {
            message(sl, 1, |scope| bytes_field(scope, 1, SCOPE.as_bytes()));
            for r in records {
                log_record(sl, r);
            }
        });
    });
    out
}

#[cfg(test)]
#[path = "../../tests/support/otlp_proto.rs"]
pub(crate) mod proto;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::proto;
    use super::*;
    use crate::tasklogs::record::Severity;

    fn rec(body: &str, attributes: Vec<Attr>) -> Record {
        Record {
            time_ns: 1_700_000_000_123_456_789,
            severity: Severity::Warn,
            body: body.into(),
            attributes,
            at: None,
        }
    }

    #[test]
    fn a_request_decodes_with_the_official_field_numbers() {
        let resource = vec![
            (
                "service.name".to_string(),
                Value::Str("oz-agent-worker".into()),
            ),
            ("run_id".to_string(), Value::Str("t-1".into())),
        ];
        let records = vec![
            rec(
                "héllo",
                vec![
                    ("log.source".into(), Value::Str("container.stdout".into())),
                    ("is_error".into(), Value::Bool(true)),
                    ("latency_ms".into(), Value::Double(12.5)),
                ],
            ),
            rec("", vec![]),
        ];
        let bytes = export_request(&resource, &records);
        let req = proto::ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(req.resource_logs.len(), 1);
        let rl = &req.resource_logs[0];
        let res = rl.resource.as_ref().unwrap();
        assert_eq!(
            proto::attrs(&res.attributes),
            vec![
                (
                    "service.name".to_string(),
                    proto::Val::Str("oz-agent-worker".into())
                ),
                ("run_id".to_string(), proto::Val::Str("t-1".into())),
            ]
        );
        assert_eq!(rl.scope_logs.len(), 1);
        let sl = &rl.scope_logs[0];
        assert_eq!(sl.scope.as_ref().unwrap().name, SCOPE);
        assert_eq!(sl.log_records.len(), 2);
        let r = &sl.log_records[0];
        assert_eq!(r.time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(r.observed_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(r.severity_number, 13);
        assert_eq!(r.severity_text, "WARN");
        assert_eq!(proto::body(r), Some("héllo".to_string()));
        assert_eq!(
            proto::attrs(&r.attributes),
            vec![
                (
                    "log.source".to_string(),
                    proto::Val::Str("container.stdout".into())
                ),
                ("is_error".to_string(), proto::Val::Bool(true)),
                ("latency_ms".to_string(), proto::Val::Double(12.5)),
            ]
        );
        assert_eq!(proto::body(&sl.log_records[1]), Some(String::new()));
        assert!(sl.log_records[1].attributes.is_empty());
    }

    #[test]
    fn varints_use_seven_bits_per_byte() {
        let cases: [(u64, &[u8]); 5] = [
            (0, &[0]),
            (1, &[1]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
        ];
        for (v, want) in cases {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out, want, "{v}");
        }
        let mut out = Vec::new();
        varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn an_empty_batch_is_still_one_resource_and_one_scope() {
        let req =
            proto::ExportLogsServiceRequest::decode(export_request(&[], &[]).as_slice()).unwrap();
        assert_eq!(req.resource_logs.len(), 1);
        assert!(req.resource_logs[0].scope_logs[0].log_records.is_empty());
    }
}
