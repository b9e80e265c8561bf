//! Label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and
//! field selectors (`f=v`, `f==v`, `f!=v`) as list and watch parameters, and the object form
//! (`matchLabels` + `matchExpressions`) used inside specs.

use serde_json::Value;

use super::resources::Kind;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq,
    NotEq,
    In,
    NotIn,
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed `labelSelector`; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && super::validate::dns_subdomain(p))
        && super::validate::label_name(name)
}

impl LabelSelector {
    /// Parses the query form; the error is the apiserver's 400 message.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            let bad = || {
                format!(
                    "unable to parse requirement: found '{p}', expected: identifier, '!', 'in', 'notin', '=', '==', '!='"
                )
            };
            let req = if let Some(k) = p.strip_prefix('!') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotExists,
                    values: vec![],
                }
            } else if let Some(open) = p.find('(') {
                let head: Vec<&str> = p[..open].split_whitespace().collect();
                let Some(inner) = p[open + 1..].strip_suffix(')') else {
                    return Err(bad());
                };
                let op = match head.as_slice() {
                    [_, "in"] => Op::In,
                    [_, "notin"] => Op::NotIn,
                    _ => return Err(bad()),
                };
                let values: Vec<String> = inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                if values.is_empty() {
                    return Err("unable to parse requirement: for 'in', 'notin' operators, values set can't be empty".to_string());
                }
                Requirement {
                    key: head[0].to_string(),
                    op,
                    values,
                }
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotEq,
                    values: vec![v.trim().to_string()],
                }
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Eq,
                    values: vec![v.trim().to_string()],
                }
            } else {
                Requirement {
                    key: p.to_string(),
                    op: Op::Exists,
                    values: vec![],
                }
            };
            if !valid_key(&req.key) {
                return Err(format!(
                    "unable to parse requirement: values[0][{}]: Invalid value: \"{}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                    req.key, req.key
                ));
            }
            if let Some(v) = req.values.iter().find(|v| !super::validate::label_value(v)) {
                return Err(format!(
                    "unable to parse requirement: values[0][{}]: Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                    req.key
                ));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `labels` (a JSON object, or absent) satisfies every requirement.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r.op {
            Op::Eq => get(&r.key) == Some(r.values[0].as_str()),
            Op::NotEq => get(&r.key) != Some(r.values[0].as_str()),
            Op::In => get(&r.key).is_some_and(|v| r.values.iter().any(|x| x == v)),
            Op::NotIn => get(&r.key).is_none_or(|v| r.values.iter().all(|x| x != v)),
            Op::Exists => get(&r.key).is_some(),
            Op::NotExists => get(&r.key).is_none(),
        })
    }
}

/// Whether an object-form selector (`{matchLabels, matchExpressions}`) selects `labels`; the
/// empty selector selects everything.
pub fn object_selects(selector: &Value, labels: Option<&Value>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let by_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()));
    let by_exprs = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|es| {
            es.iter().all(|e| {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let values: Vec<&str> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match e.get("operator").and_then(Value::as_str) {
                    Some("In") => get(key).is_some_and(|v| values.contains(&v)),
                    Some("NotIn") => get(key).is_none_or(|v| !values.contains(&v)),
                    Some("Exists") => get(key).is_some(),
                    Some("DoesNotExist") => get(key).is_none(),
                    _ => false,
                }
            })
        });
    by_labels && by_exprs
}

/// A parsed `fieldSelector`.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// The fields a kind can be selected by, and where each is in the object.
fn field_path(kind: Kind, field: &str) -> Option<&'static str> {
    let common = match field {
        "metadata.name" => Some("/metadata/name"),
        "metadata.namespace" => Some("/metadata/namespace"),
        _ => None,
    };
    common.or(match (kind, field) {
        (Kind::Pod, "status.phase") => Some("/status/phase"),
        (Kind::Pod, "spec.nodeName") => Some("/spec/nodeName"),
        (Kind::Pod, "spec.restartPolicy") => Some("/spec/restartPolicy"),
        (Kind::Pod, "status.podIP") => Some("/status/podIP"),
        (Kind::Job, "status.successful") => Some("/status/succeeded"),
        (Kind::Event, "involvedObject.kind") => Some("/involvedObject/kind"),
        (Kind::Event, "involvedObject.namespace") => Some("/involvedObject/namespace"),
        (Kind::Event, "involvedObject.name") => Some("/involvedObject/name"),
        (Kind::Event, "involvedObject.uid") => Some("/involvedObject/uid"),
        (Kind::Event, "involvedObject.apiVersion") => Some("/involvedObject/apiVersion"),
        (Kind::Event, "involvedObject.resourceVersion") => Some("/involvedObject/resourceVersion"),
        (Kind::Event, "involvedObject.fieldPath") => Some("/involvedObject/fieldPath"),
        (Kind::Event, "reason") => Some("/reason"),
        (Kind::Event, "reportingComponent") => Some("/reportingComponent"),
        (Kind::Event, "source") => Some("/source/component"),
        (Kind::Event, "type") => Some("/type"),
        _ => None,
    })
}

impl FieldSelector {
    /// Parses the query form for `kind`; the error is the apiserver's 400 message.
    pub fn parse(s: &str, kind: Kind) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (f, eq, v) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            let f = f.trim();
            if field_path(kind, f).is_none() {
                return Err(format!("field label not supported: {f}"));
            }
            out.push((f.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, obj: &Value, kind: Kind) -> bool {
        self.0.iter().all(|(f, eq, v)| {
            let actual = field_path(kind, f)
                .and_then(|p| obj.pointer(p))
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (actual == *v) == *eq
        })
    }
}
