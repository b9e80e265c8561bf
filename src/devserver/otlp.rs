//! The receiving side of task-log export for `berth dev` (PROTOCOL §8.3): a small protobuf
//! reader for the `ExportLogsServiceRequest` fields berth sends (bodies and attributes with
//! string, bool, int and double values, the resource's attributes), so a newcomer can see what
//! the worker exported. Unknown fields are skipped; malformed input is an error, never a panic.

use serde::Serialize;

/// One received record, as `GET /v1/tasks/{id}/logs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceivedRecord {
    pub body: String,
    pub severity: String,
    /// Attributes, values as text.
    pub attributes: Vec<(String, String)>,
    /// `run_id` of the record's resource.
    #[serde(skip)]
    pub run_id: String,
}

/// The input is not the protobuf it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed OTLP protobuf")]
pub struct Malformed;

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Len(&'a [u8]),
}

fn varint(b: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or(Malformed)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Malformed)
}

/// The fields of one message, in order.
fn fields(b: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, Malformed> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let key = varint(b, &mut at)?;
        let take = |at: &mut usize, n: usize| -> Result<&[u8], Malformed> {
            let s = b
                .get(*at..at.checked_add(n).ok_or(Malformed)?)
                .ok_or(Malformed)?;
            *at += n;
            Ok(s)
        };
        let w = match key & 7 {
            0 => Wire::Varint(varint(b, &mut at)?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                take(&mut at, 8)?.try_into().map_err(|_| Malformed)?,
            )),
            2 => {
                let n = usize::try_from(varint(b, &mut at)?).map_err(|_| Malformed)?;
                Wire::Len(take(&mut at, n)?)
            }
            5 => {
                take(&mut at, 4)?;
                Wire::Fixed32
            }
            _ => return Err(Malformed),
        };
        out.push((key >> 3, w));
    }
    Ok(out)
}

fn messages(b: &[u8], field: u64) -> Result<Vec<&[u8]>, Malformed> {
    Ok(fields(b)?
        .into_iter()
        .filter_map(|(f, w)| match w {
            Wire::Len(m) if f == field => Some(m),
            _ => None,
        })
        .collect())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An `AnyValue` as text.
fn any_value(b: &[u8]) -> Result<String, Malformed> {
    Ok(match fields(b)?.into_iter().next() {
        Some((1, Wire::Len(s))) => text(s),
        Some((2, Wire::Varint(v))) => (v != 0).to_string(),
        Some((3, Wire::Varint(v))) => (v as i64).to_string(),
        Some((4, Wire::Fixed64(v))) => f64::from_bits(v).to_string(),
        _ => String::new(),
    })
}

fn key_values(b: &[u8], field: u64) -> Result<Vec<(String, String)>, Malformed> {
    messages(b, field)?
        .into_iter()
        .map(|kv| {
            let mut key = String::new();
            let mut value = String::new();
            for (f, w) in fields(kv)? {
                match (f, w) {
                    (1, Wire::Len(k)) => key = text(k),
                    (2, Wire::Len(v)) => value = any_value(v)?,
                    _ => {}
                }
            }
            Ok((key, value))
        })
        .collect()
}

fn log_record(b: &[u8], run_id: &str) -> Result<ReceivedRecord, Malformed> {
    let mut r = ReceivedRecord {
        body: String::new(),
        severity: String::new(),
        attributes: key_values(b, 6)?,
        run_id: run_id.to_string(),
    };
    for (f, w) in fields(b)? {
        match (f, w) {
            (3, Wire::Len(s)) => r.severity = text(s),
            (5, Wire::Len(v)) => r.body = any_value(v)?,
            _ => {}
        }
    }
    Ok(r)
}

/// Every record of an `ExportLogsServiceRequest`, with its resource's `run_id`.
pub fn decode(b: &[u8]) -> Result<Vec<ReceivedRecord>, Malformed> {
    let mut out = Vec::new();
    for rl in messages(b, 1)? {
        let resource = messages(rl, 1)?
            .into_iter()
            .map(|res| key_values(res, 1))
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        let run_id = resource
            .iter()
            .find(|(k, _)| k == "run_id")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for sl in messages(rl, 2)? {
            for r in messages(sl, 2)? {
                out.push(log_record(r, &run_id)?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasklogs::record::{Record, Severity, Value};

    #[test]
    fn what_berth_encodes_decodes_here() {
        let resource = vec![("run_id".to_string(), Value::Str("t-1".into()))];
        let records = vec![Record {
            time_ns: 1,
            severity: Severity::Info,
            body: "hello".into(),
            attributes: vec![
                ("log.source".into(), Value::Str("container.stdout".into())),
                ("is_error".into(), Value::Bool(false)),
                ("latency_ms".into(), Value::Double(1.5)),
            ],
            at: None,
        }];
        let bytes = crate::tasklogs::otlp::export_request(&resource, &records);
        let got = decode(&bytes).unwrap();
        assert_eq!(
            got,
            vec![ReceivedRecord {
                body: "hello".into(),
                severity: "INFO".into(),
                attributes: vec![
                    ("log.source".into(), "container.stdout".into()),
                    ("is_error".into(), "false".into()),
                    ("latency_ms".into(), "1.5".into()),
                ],
                run_id: "t-1".into(),
            }]
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let bytes = crate::tasklogs::otlp::export_request(&[], &[]);
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        assert_eq!(decode(&[0x0a, 0x05, 0x01]), Err(Malformed));
        assert_eq!(decode(&[0xff; 11]), Err(Malformed));
        assert_eq!(decode(&[0x0f]), Err(Malformed), "wire type 7");
        assert!(decode(&[]).unwrap().is_empty());
    }
}
