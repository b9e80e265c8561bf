//! `Status` objects: every error the fake answers is one, shaped as the real apiserver's
//! (kube parses them into `ErrorResponse`).

use serde_json::{Value, json};

use super::resources::ResInfo;

/// An error answer: HTTP code plus the `Status` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Sent as `Retry-After` (429, some 5xx) and as `details.retryAfterSeconds`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    /// The `Status` body.
    pub fn body(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = self.details.clone();
        if let Some(secs) = self.retry_after {
            let d = details.get_or_insert_with(|| json!({}));
            d["retryAfterSeconds"] = json!(secs);
        }
        if let Some(d) = details {
            s["details"] = d;
        }
        if self.reason.is_empty()
            && let Some(o) = s.as_object_mut()
        {
            o.remove("reason");
        }
        s
    }
}

/// `details` naming an object of a resource (`kind` is the plural resource, as the real
/// server puts it for these errors).
fn details(res: &ResInfo, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": res.plural});
    if !res.group.is_empty() {
        d["group"] = json!(res.group);
    }
    d
}

pub fn not_found(res: &ResInfo, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", res.qualified()),
    )
    .with_details(details(res, name))
}

pub fn namespace_not_found(ns: &str) -> ApiError {
    ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
        .with_details(json!({"name": ns, "kind": "namespaces"}))
}

/// A path the server does not serve.
pub fn no_route() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
    .with_details(json!({}))
}

pub fn already_exists(res: &ResInfo, name: &str) -> ApiError {
    ApiError::new(
        409,
        "AlreadyExists",
        format!("{} \"{name}\" already exists", res.qualified()),
    )
    .with_details(details(res, name))
}

/// 409 Conflict: `Operation cannot be fulfilled on jobs.batch "x": WHY`.
pub fn conflict(res: &ResInfo, name: &str, why: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            res.qualified()
        ),
    )
    .with_details(details(res, name))
}

/// The optimistic-concurrency conflict of an update or a fenced patch.
pub fn modified(res: &ResInfo, name: &str) -> ApiError {
    conflict(
        res,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

/// One field error of a 422: (field, cause reason, its message as printed after the field).
pub struct Cause {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl Cause {
    /// `Invalid value: VALUE: DETAIL` (FieldValueInvalid).
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Cause {
        let shown = match value {
            Value::String(s) => format!("\"{s}\""),
            Value::Null => "null".to_string(),
            v => v.to_string(),
        };
        Cause {
            field: field.to_string(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {detail}"),
        }
    }

    pub fn required(field: &str, detail: &str) -> Cause {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause {
            field: field.to_string(),
            reason: "FieldValueRequired",
            message,
        }
    }

    pub fn forbidden(field: &str, detail: &str) -> Cause {
        Cause {
            field: field.to_string(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
        }
    }

    pub fn unsupported(field: &str, value: &str, supported: &[&str]) -> Cause {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Cause {
            field: field.to_string(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: \"{value}\": supported values: {}",
                list.join(", ")
            ),
        }
    }
}

/// 422 Invalid: `Job.batch "x" is invalid: FIELD: MESSAGE` (several causes in brackets).
pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let listed = if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    };
    let mut d = json!({
        "name": name,
        "kind": kind,
        "causes": causes.iter().map(|c| json!({
            "reason": c.reason, "message": c.message, "field": c.field
        })).collect::<Vec<_>>(),
    });
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    ApiError::new(
        422,
        "Invalid",
        format!("{qualified} \"{name}\" is invalid: {listed}"),
    )
    .with_details(d)
}

pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "BadRequest", message)
}

pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

/// 403 as RBAC words it for the fake's service account.
pub fn forbidden(
    res: &ResInfo,
    sub: Option<&str>,
    name: Option<&str>,
    verb: &str,
    ns: Option<&str>,
) -> ApiError {
    let resource = match sub {
        Some(s) => format!("{}/{s}", res.plural),
        None => res.plural.to_string(),
    };
    let what = match name {
        Some(n) => format!("{} \"{n}\"", res.qualified()),
        None => res.qualified(),
    };
    let scope = match ns {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    let mut d = json!({"kind": resource});
    if let Some(n) = name {
        d["name"] = json!(n);
    }
    if !res.group.is_empty() {
        d["group"] = json!(res.group);
    }
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{what} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\"{scope}",
            super::USER,
            res.group
        ),
    )
    .with_details(d)
}

/// 403 of an admission plugin rejecting a create (`pods "x" is forbidden: WHY`).
pub fn admission_forbidden(res: &ResInfo, name: &str, why: &str) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!("{} \"{name}\" is forbidden: {why}", res.qualified()),
    )
    .with_details(details(res, name))
}

pub fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
    .with_details(json!({}))
}

pub fn unsupported_media_type(ct: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json (not by this fake), application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {ct:?}"
        ),
    )
}

/// 410 Expired, as a watch's ERROR event or a list's answer.
pub fn expired(message: String) -> ApiError {
    ApiError::new(410, "Expired", message)
}

/// What a fault rule answers for a code it was given.
pub fn for_code(code: u16, message: Option<&str>) -> ApiError {
    let (reason, default): (&'static str, &str) = match code {
        400 => ("BadRequest", "bad request"),
        401 => ("Unauthorized", "Unauthorized"),
        403 => ("Forbidden", "forbidden"),
        404 => (
            "NotFound",
            "the server could not find the requested resource",
        ),
        409 => ("Conflict", "conflict"),
        410 => ("Expired", "gone"),
        422 => ("Invalid", "invalid"),
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.",
        ),
        500 => ("InternalError", "Internal error occurred: injected fault"),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted",
        ),
        _ => ("", "injected fault"),
    };
    let mut e = ApiError::new(code, reason, message.unwrap_or(default));
    if code == 500 {
        e.details = Some(json!({"causes": [{"message": e.message.clone()}]}));
    }
    e
}
