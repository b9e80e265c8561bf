//! Name, label and quantity rules the apiserver validates with, and the 422 causes it words.

use serde_json::Value;

use super::status::Cause;

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, at most 253.
pub fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// Label key name part (and label value when non-empty): `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63.
pub fn label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

pub fn label_value(s: &str) -> bool {
    s.is_empty() || label_name(s)
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const KEY_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// Checks `metadata.name` (a subdomain, or a label when `label`), at most `max` characters.
pub fn name(causes: &mut Vec<Cause>, name: &str, label: bool, max: usize) {
    let v = Value::String(name.to_string());
    if name.is_empty() {
        causes.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if name.len() > max {
        causes.push(Cause::invalid(
            "metadata.name",
            &v,
            &format!("must be no more than {max} characters"),
        ));
    } else if label && !dns_label(name) {
        causes.push(Cause::invalid("metadata.name", &v, LABEL_MSG));
    } else if !dns_subdomain(name) {
        causes.push(Cause::invalid("metadata.name", &v, SUBDOMAIN_MSG));
    }
}

/// Checks a labels map at `field` (keys and values).
pub fn labels(causes: &mut Vec<Cause>, field: &str, labels: Option<&Value>) {
    let Some(map) = labels.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in map {
        let (prefix, key_name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        if prefix.is_some_and(|p| !dns_subdomain(p)) || !label_name(key_name) {
            causes.push(Cause::invalid(field, &Value::String(k.clone()), KEY_MSG));
        }
        match v.as_str() {
            Some(s) if s.len() > 63 => causes.push(Cause::invalid(
                field,
                v,
                "must be no more than 63 characters",
            )),
            Some(s) if !label_value(s) => causes.push(Cause::invalid(field, v, VALUE_MSG)),
            Some(_) => {}
            None => causes.push(Cause::invalid(field, v, "label values must be strings")),
        }
    }
}

/// A resource quantity in its base unit (cores for cpu, bytes for memory), as f64.
pub fn quantity(q: &Value) -> Option<f64> {
    let s = match q {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => return n.as_f64(),
        _ => return None,
    };
    let suffixes: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    for (suffix, mul) in suffixes {
        if let Some(num) = s.strip_suffix(suffix) {
            return num.parse::<f64>().ok().map(|n| n * mul);
        }
    }
    s.parse::<f64>().ok()
}
