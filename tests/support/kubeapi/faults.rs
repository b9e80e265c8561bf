//! Injected failures: rules matched against each request before it is served, and the record
//! of every request served.

/// A rule: requests it matches are answered with its status (or a cut connection) instead of
/// being served. Build with [`Fault::status`] and narrow with the builder methods.
#[derive(Debug, Clone)]
pub struct Fault {
    pub(super) code: u16,
    pub(super) verb: Option<String>,
    pub(super) resource: Option<String>,
    pub(super) subresource: Option<String>,
    pub(super) name: Option<String>,
    /// How many more requests it answers (None: every one).
    pub(super) times: Option<u32>,
    pub(super) retry_after: Option<u64>,
    pub(super) message: Option<String>,
    /// Close the connection without an answer.
    pub(super) reset: bool,
}

impl Fault {
    /// Answers `code` with the Status the real apiserver would give for it (403: the RBAC
    /// message for the request; 429: TooManyRequests; 500: InternalError; 503:
    /// ServiceUnavailable).
    pub fn status(code: u16) -> Fault {
        Fault {
            code,
            verb: None,
            resource: None,
            subresource: None,
            name: None,
            times: None,
            retry_after: None,
            message: None,
            reset: false,
        }
    }

    /// 429 with `Retry-After: secs`.
    pub fn too_many_requests(secs: u64) -> Fault {
        Fault::status(429).retry_after(secs)
    }

    /// The connection is closed without an answer.
    pub fn reset() -> Fault {
        Fault {
            reset: true,
            ..Fault::status(0)
        }
    }

    /// Only this Kubernetes verb: get, list, watch, create, update, patch, delete,
    /// deletecollection.
    pub fn verb(mut self, v: &str) -> Fault {
        self.verb = Some(v.to_string());
        self
    }

    /// Only this resource (plural: "jobs", "pods", "events").
    pub fn resource(mut self, r: &str) -> Fault {
        self.resource = Some(r.to_string());
        self
    }

    /// Only this subresource ("log", "status").
    pub fn subresource(mut self, s: &str) -> Fault {
        self.subresource = Some(s.to_string());
        self
    }

    /// Only requests naming this object.
    pub fn name(mut self, n: &str) -> Fault {
        self.name = Some(n.to_string());
        self
    }

    /// Only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Fault {
        self.retry_after = Some(secs);
        self
    }

    /// The Status message instead of the default one.
    pub fn message(mut self, m: &str) -> Fault {
        self.message = Some(m.to_string());
        self
    }

    pub(super) fn matches(&self, r: &RequestRecord) -> bool {
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        self.times != Some(0)
            && eq(&self.verb, &r.verb)
            && eq(&self.resource, &r.resource)
            && eq(&self.subresource, &r.subresource)
            && eq(&self.name, &r.name)
    }
}

/// One request as served (or refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// get, list, watch, create, update, patch, delete, deletecollection; for non-resource
    /// paths (`/version`, `/api`) the HTTP method in lower case.
    pub verb: String,
    pub group: String,
    /// Plural resource ("" for non-resource paths).
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The path, for non-resource requests.
    pub path: String,
    pub watch: bool,
    /// `follow=true` on pods/log.
    pub follow: bool,
    /// The HTTP status answered (0: the connection was cut by a fault).
    pub status: u16,
}
