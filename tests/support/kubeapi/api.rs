//! The HTTP API: paths to resources and verbs, and each verb's handler (get, list, watch,
//! create, update, patch, delete, deletecollection, pods/log, pods/eviction, PodMetrics,
//! SelfSubjectAccessReview, discovery).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::controllers;
use super::logs::{self, LogOptions, LogStream};
use super::objects::{self, DeleteOptions};
use super::patch;
use super::resources::{Kind, RESOURCES, ResInfo, info, lookup};
use super::selectors::{FieldSelector, LabelSelector};
use super::state::{FollowEnd, Shared, State, parse_ts};
use super::status::{self, ApiError, Cause};
use super::store::meta;
use super::watch::{self, WatchRequest};

/// A request as the handlers see it.
pub struct Req {
    pub method: http::Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub content_type: String,
    pub body: Bytes,
}

impl Req {
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1"))
    }
}

/// What is answered.
pub enum Answer {
    Json(u16, Value),
    Error(ApiError),
    Text(Bytes),
    /// A streamed body (watch, follow).
    Stream(&'static str, mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Self {
        Answer::Error(e)
    }
}

/// A request resolved to a resource.
#[derive(Debug, Clone)]
pub struct Target {
    pub res: &'static ResInfo,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub verb: &'static str,
}

/// Resolves a path and method; None for non-resource paths.
pub fn target(
    method: &http::Method,
    path: &str,
    query: &[(String, String)],
) -> Result<Option<Target>, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(None),
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, r, tail @ ..] => {
            let mut v = vec![*r];
            v.extend_from_slice(tail);
            (Some(ns.to_string()), v)
        }
        // The namespace object itself.
        ["namespaces", name] if group.is_empty() => (None, vec!["namespaces", *name]),
        r => (None, r.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(status::no_route()),
    };
    let Some(res) = lookup(group, version, plural) else {
        return Err(status::no_route());
    };
    if !res.namespaced && ns.is_some() {
        return Err(status::no_route());
    }
    let watch = query
        .iter()
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    let verb = match (method.as_str(), name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(status::method_not_allowed()),
    };
    Ok(Some(Target {
        res,
        ns,
        name,
        sub,
        verb,
    }))
}

fn json_body(req: &Req) -> Result<Value, ApiError> {
    if req.body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        status::bad_request(format!(
            "error decoding from json: illegal base64 data at input byte 0; {e}"
        ))
    })
}

/// Serves a non-resource path.
pub fn non_resource(shared: &Shared, req: &Req, port: u16) -> Answer {
    match req.path.trim_end_matches('/') {
        "/version" => Answer::Json(
            200,
            json!({
                "major": "1", "minor": "33", "emulationMajor": "1", "emulationMinor": "33",
                "minCompatibilityMajor": "1", "minCompatibilityMinor": "32",
                "gitVersion": "v1.33.0-fake", "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64",
            }),
        ),
        "/healthz" | "/livez" | "/readyz" => Answer::Text(Bytes::from_static(b"ok")),
        "/api" => Answer::Json(
            200,
            json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}],
            }),
        ),
        "/apis" => {
            let metrics = shared.state.lock().kubelet.metrics;
            let mut groups: Vec<(&str, &str)> = RESOURCES
                .iter()
                .filter(|r| !r.group.is_empty())
                .filter(|r| metrics || r.kind != Kind::PodMetrics)
                .map(|r| (r.group, r.version))
                .collect();
            groups.dedup();
            Answer::Json(
                200,
                json!({
                    "kind": "APIGroupList", "apiVersion": "v1",
                    "groups": groups.iter().map(|(g, v)| json!({
                        "name": g,
                        "versions": [{"groupVersion": format!("{g}/{v}"), "version": v}],
                        "preferredVersion": {"groupVersion": format!("{g}/{v}"), "version": v},
                    })).collect::<Vec<_>>(),
                }),
            )
        }
        p => {
            let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
            let (g, v) = match segs.as_slice() {
                ["api", "v1"] => ("", "v1"),
                ["apis", g, v] => (*g, *v),
                _ => return status::no_route().into(),
            };
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group == g && r.version == v)
                .map(|r| {
                    json!({"name": r.plural, "singularName": r.kind_name.to_lowercase(),
                           "namespaced": r.namespaced, "kind": r.kind_name,
                           "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]})
                })
                .collect();
            if resources.is_empty() {
                return status::no_route().into();
            }
            let gv = if g.is_empty() {
                v.to_string()
            } else {
                format!("{g}/{v}")
            };
            Answer::Json(
                200,
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            )
        }
    }
}

/// Serves a resource request.
pub fn serve(shared: &Arc<Shared>, req: &Req, t: &Target) -> Answer {
    match (t.res.kind, t.sub.as_deref(), t.verb) {
        (Kind::PodMetrics, None, "get" | "list") => return pod_metrics(shared, t),
        (Kind::PodMetrics, _, _) => return status::method_not_allowed().into(),
        (Kind::SelfSubjectAccessReview, None, "create") => return access_review(shared, req),
        (Kind::SelfSubjectAccessReview, _, _) => return status::method_not_allowed().into(),
        (Kind::Pod, Some("log"), "get") => return pod_log(shared, req, t),
        (Kind::Pod, Some("eviction"), "create") => return eviction(shared, t),
        (_, None, _) | (_, Some("status"), "get" | "update" | "patch") => {}
        _ => return status::no_route().into(),
    }
    let ns = t.ns.clone().unwrap_or_default();
    match t.verb {
        "get" => get(shared, t, &ns),
        "list" => list(shared, req, t),
        "watch" => watch_(shared, req, t),
        "create" => create(shared, req, t, &ns),
        "update" | "patch" => update(shared, req, t, &ns),
        "delete" => delete(shared, req, t, &ns),
        "deletecollection" => delete_collection(shared, req, t, &ns),
        _ => status::method_not_allowed().into(),
    }
}

fn name_of(t: &Target) -> &str {
    t.name.as_deref().unwrap_or_default()
}

fn get(shared: &Shared, t: &Target, ns: &str) -> Answer {
    let st = shared.state.lock();
    match st.store.get(t.res.kind, ns, name_of(t)) {
        Some(o) => Answer::Json(200, o.clone()),
        None => status::not_found(t.res, name_of(t)).into(),
    }
}

fn selectors(req: &Req, t: &Target) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(req.q("labelSelector").unwrap_or_default())
        .map_err(status::bad_request)?;
    let fields = FieldSelector::parse(req.q("fieldSelector").unwrap_or_default(), t.res.kind)
        .map_err(status::bad_request)?;
    Ok((labels, fields))
}

fn list(shared: &Shared, req: &Req, t: &Target) -> Answer {
    let (labels, fields) = match selectors(req, t) {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    let limit = req
        .q("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    // Continue tokens name the last object served; the list goes on from the current state.
    let after: Option<(String, String)> =
        req.q("continue").filter(|c| !c.is_empty()).and_then(|c| {
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()?;
            let v: Value = serde_json::from_slice(&raw).ok()?;
            Some((
                v["ns"].as_str()?.to_string(),
                v["name"].as_str()?.to_string(),
            ))
        });
    if req.q("continue").is_some_and(|c| !c.is_empty()) && after.is_none() {
        return status::bad_request(
            "continue key is not valid: illegal base64 data at input byte 0",
        )
        .into();
    }
    let st = shared.state.lock();
    let mut items: Vec<Value> = st
        .store
        .list(t.res.kind, t.ns.as_deref())
        .into_iter()
        .filter(|o| watch::matches(t.res, &labels, &fields, o))
        .filter(|o| {
            after.as_ref().is_none_or(|(ns, name)| {
                (meta(o, "namespace"), meta(o, "name")) > (ns.as_str(), name.as_str())
            })
        })
        .collect();
    let mut md = json!({"resourceVersion": st.store.rv().to_string()});
    if let Some(l) = limit
        && items.len() > l
    {
        let rest = items.len() - l;
        items.truncate(l);
        if let Some(last) = items.last() {
            use base64::Engine;
            let tok =
                json!({"ns": meta(last, "namespace"), "name": meta(last, "name")}).to_string();
            md["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tok));
            md["remainingItemCount"] = json!(rest);
        }
    }
    // Items of a list carry no kind or apiVersion of their own.
    for i in &mut items {
        if let Some(o) = i.as_object_mut() {
            o.remove("kind");
            o.remove("apiVersion");
        }
    }
    Answer::Json(
        200,
        json!({"kind": watch::list_kind(t.res), "apiVersion": t.res.api_version(), "metadata": md, "items": items}),
    )
}

fn watch_(shared: &Arc<Shared>, req: &Req, t: &Target) -> Answer {
    let (labels, fields) = match selectors(req, t) {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    let w = WatchRequest {
        res: t.res,
        ns: t.ns.clone(),
        labels,
        fields,
        resource_version: req.q("resourceVersion").map(str::to_string),
        bookmarks: req.flag("allowWatchBookmarks"),
        timeout: req
            .q("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs),
        send_initial_events: req.flag("sendInitialEvents"),
    };
    match watch::start(shared, w) {
        Ok(rx) => Answer::Stream("application/json", rx),
        Err(e) => e.into(),
    }
}

fn create(shared: &Shared, req: &Req, t: &Target, ns: &str) -> Answer {
    if t.sub.is_some() || t.name.is_some() {
        return status::method_not_allowed().into();
    }
    let body = match json_body(req) {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let dry_run = req.q("dryRun") == Some("All");
    shared.with(|st| match objects::prepare_create(st, t.res, ns, body) {
        Ok(obj) if dry_run => Answer::Json(201, obj),
        Ok(obj) => Answer::Json(201, st.store.create(t.res.kind, obj)),
        Err(e) => e.into(),
    })
}

fn update(shared: &Shared, req: &Req, t: &Target, ns: &str) -> Answer {
    let name = name_of(t).to_string();
    let body = match json_body(req) {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let ct = req
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let apply = t.verb == "patch" && ct == "application/apply-patch+yaml";
    if t.verb == "patch"
        && !matches!(
            ct.as_str(),
            "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "application/apply-patch+yaml"
        )
    {
        return status::unsupported_media_type(&ct).into();
    }
    if apply && req.q("fieldManager").is_none_or(str::is_empty) {
        return status::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch").into();
    }
    shared.with(|st| {
        let Some(old) = st.store.get(t.res.kind, ns, &name).cloned() else {
            if apply {
                return match objects::prepare_create(st, t.res, ns, body) {
                    Ok(obj) => Answer::Json(201, st.store.create(t.res.kind, obj)),
                    Err(e) => e.into(),
                };
            }
            return status::not_found(t.res, &name).into();
        };
        // Fences: a uid or resourceVersion in the body must be the object's.
        let body_rv = body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !body_rv.is_empty() && body_rv != meta(&old, "resourceVersion") {
            return status::modified(t.res, &name).into();
        }
        let body_uid = body["metadata"]["uid"].as_str().unwrap_or_default();
        if !body_uid.is_empty() && body_uid != meta(&old, "uid") {
            return status::conflict(
                t.res,
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {body_uid}, UID in object meta: {}",
                    meta(&old, "uid")
                ),
            )
            .into();
        }
        if t.verb == "update" && meta(&body, "name") != name {
            return status::bad_request(
                "the name of the object does not match the name on the URL",
            )
            .into();
        }
        let mut new = if t.verb == "update" {
            body
        } else {
            let mut n = old.clone();
            patch::merge(&mut n, &body);
            n
        };
        if let Err(e) = objects::check_update(t.res, &old, &mut new, t.sub.as_deref()) {
            return e.into();
        }
        let stored = st.store.put(t.res.kind, new);
        after_update(st, t.res, &old, &stored);
        Answer::Json(200, stored)
    })
}

/// Reactions of the kubelet to a changed pod spec (a lowered deadline is seen by its sync).
fn after_update(_st: &mut State, _res: &ResInfo, _old: &Value, _new: &Value) {}

fn delete(shared: &Shared, req: &Req, t: &Target, ns: &str) -> Answer {
    let body = match json_body(req) {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let opts = match DeleteOptions::parse(&body, &req.query) {
        Ok(o) => o,
        Err(e) => return e.into(),
    };
    shared.with(
        |st| match objects::delete(st, t.res, ns, name_of(t), &opts) {
            Ok(v) => Answer::Json(200, v),
            Err(e) => e.into(),
        },
    )
}

fn delete_collection(shared: &Shared, req: &Req, t: &Target, ns: &str) -> Answer {
    let (labels, fields) = match selectors(req, t) {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    let body = match json_body(req) {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let opts = match DeleteOptions::parse(&body, &req.query) {
        Ok(o) => o,
        Err(e) => return e.into(),
    };
    shared.with(|st| {
        let victims: Vec<Value> = st
            .store
            .list(t.res.kind, Some(ns))
            .into_iter()
            .filter(|o| watch::matches(t.res, &labels, &fields, o))
            .collect();
        let mut items = Vec::new();
        for v in victims {
            if let Ok(o) = objects::delete(st, t.res, ns, meta(&v, "name"), &opts) {
                items.push(if o["kind"] == "Status" { v } else { o });
            }
        }
        Answer::Json(
            200,
            json!({"kind": watch::list_kind(t.res), "apiVersion": t.res.api_version(),
                   "metadata": {"resourceVersion": st.store.rv().to_string()}, "items": items}),
        )
    })
}

fn pod_metrics(shared: &Shared, t: &Target) -> Answer {
    let st = shared.state.lock();
    if !st.kubelet.metrics {
        return status::no_route().into();
    }
    let (cpu, mem) = st.kubelet.usage;
    let one = |p: &Value| {
        let containers: Vec<Value> = p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["state"]["running"].is_object())
            .map(|c| json!({"name": c["name"], "usage": {"cpu": format!("{cpu}n"), "memory": format!("{}Ki", mem / 1024)}}))
            .collect();
        (!containers.is_empty()).then(|| {
            json!({
                "kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": meta(p, "name"), "namespace": meta(p, "namespace"),
                             "creationTimestamp": super::state::now_rfc3339(), "labels": p["metadata"]["labels"]},
                "timestamp": super::state::now_rfc3339(), "window": "10.002s", "containers": containers,
            })
        })
    };
    let ns = t.ns.clone().unwrap_or_default();
    match &t.name {
        Some(name) => match st.store.get(Kind::Pod, &ns, name).and_then(one) {
            Some(m) => Answer::Json(200, m),
            None => ApiError::new(
                404,
                "NotFound",
                format!("podmetrics.metrics.k8s.io \"{ns}/{name}\" not found"),
            )
            .into(),
        },
        None => {
            let items: Vec<Value> = st
                .store
                .list(Kind::Pod, t.ns.as_deref())
                .iter()
                .filter_map(one)
                .collect();
            Answer::Json(
                200,
                json!({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items}),
            )
        }
    }
}

fn access_review(shared: &Shared, req: &Req) -> Answer {
    let mut body = match json_body(req) {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let a = &body["spec"]["resourceAttributes"];
    let verb = a["verb"].as_str().unwrap_or_default();
    let group = a["group"].as_str().unwrap_or_default();
    // RBAC names a subresource as `resource/subresource` (pods/log).
    let resource = match a["subresource"].as_str().filter(|s| !s.is_empty()) {
        Some(sub) => format!("{}/{sub}", a["resource"].as_str().unwrap_or_default()),
        None => a["resource"].as_str().unwrap_or_default().to_string(),
    };
    let allowed = !shared.state.lock().denies(verb, group, &resource);
    body["status"] = json!({"allowed": allowed});
    body["kind"] = json!("SelfSubjectAccessReview");
    body["apiVersion"] = json!("authorization.k8s.io/v1");
    if body["metadata"].is_null() {
        body["metadata"] = json!({"creationTimestamp": null});
    }
    Answer::Json(201, body)
}

impl State {
    /// Whether RBAC (the deny rules) refuses this.
    pub fn denies(&self, verb: &str, group: &str, resource: &str) -> bool {
        self.denied.iter().any(|(v, g, r)| {
            (v == verb || v == "*") && (g == group || g == "*") && (r == resource || r == "*")
        })
    }
}

/// The Eviction API: a DisruptionTarget condition, then a graceful delete.
fn eviction(shared: &Shared, t: &Target) -> Answer {
    let ns = t.ns.clone().unwrap_or_default();
    let name = name_of(t).to_string();
    shared.with(|st| match super::disrupt(st, &ns, &name, super::Disruption::Eviction) {
        Ok(()) => Answer::Json(
            201,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ),
        Err(e) => e.into(),
    })
}

/// pods/log: the kubelet's reading of a container's log.
fn pod_log(shared: &Arc<Shared>, req: &Req, t: &Target) -> Answer {
    let ns = t.ns.clone().unwrap_or_default();
    let name = name_of(t).to_string();
    let int = |k: &str| -> Result<Option<i64>, ApiError> {
        match req.q(k) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                status::bad_request(format!("unable to parse quantity: {k}={v}: strconv.ParseInt: parsing {v:?}: invalid syntax"))
            }),
        }
    };
    let (tail, limit, since_secs) = match (int("tailLines"), int("limitBytes"), int("sinceSeconds"))
    {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into(),
    };
    let since_time = match req.q("sinceTime") {
        None => None,
        Some(s) => match parse_ts(s) {
            Some(ns) => Some(ns),
            None => {
                return status::bad_request(format!(
                    "parsing time \"{s}\" as \"2006-01-02T15:04:05Z07:00\": cannot parse \"{s}\" as \"2006\""
                ))
                .into();
            }
        },
    };
    let mut causes = Vec::new();
    if tail.is_some_and(|n| n < 0) {
        causes.push(Cause::invalid(
            "tailLines",
            &json!(tail),
            "must be greater than or equal to 0",
        ));
    }
    if limit.is_some_and(|n| n < 1) {
        causes.push(Cause::invalid(
            "limitBytes",
            &json!(limit),
            "must be greater than 0",
        ));
    }
    if since_secs.is_some_and(|n| n < 1) {
        causes.push(Cause::invalid(
            "sinceSeconds",
            &json!(since_secs),
            "must be greater than 0",
        ));
    }
    if since_secs.is_some() && since_time.is_some() {
        causes.push(Cause::forbidden(
            "",
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        ));
    }
    let st = shared.state.lock();
    let split = st.kubelet.split_streams;
    // Without the feature gate the apiserver drops the field: merged logs, no error.
    let stream = match req.q("stream").filter(|_| split) {
        None | Some("All") => None,
        Some("Stdout") => Some(LogStream::Stdout),
        Some("Stderr") => Some(LogStream::Stderr),
        Some(other) => {
            causes.push(Cause::unsupported(
                "stream",
                other,
                &["All", "Stderr", "Stdout"],
            ));
            None
        }
    };
    if stream.is_some() && tail.is_some() {
        causes.push(Cause::forbidden(
            "tailLines",
            "tailLines is not supported when specific stream is requested",
        ));
    }
    if !causes.is_empty() {
        return status::invalid("PodLogOptions", "", &name, causes).into();
    }
    let Some(pod) = st.store.get(Kind::Pod, &ns, &name).cloned() else {
        return status::not_found(info(Kind::Pod), &name).into();
    };
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let mains = names("containers");
    let inits = names("initContainers");
    let container = match req.q("container").filter(|c| !c.is_empty()) {
        Some(c) if mains.iter().chain(inits.iter()).any(|n| n == c) => c.to_string(),
        Some(c) => {
            return status::bad_request(format!("container {c} is not valid for pod {name}"))
                .into();
        }
        None if mains.len() == 1 => mains[0].clone(),
        None => {
            let mut m = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                mains.join(" ")
            );
            if !inits.is_empty() {
                m.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            return status::bad_request(m).into();
        }
    };
    if pod["spec"]["nodeName"].is_null() {
        return status::bad_request(format!("pod {name} does not have a host assigned")).into();
    }
    let uid = meta(&pod, "uid").to_string();
    if req.flag("previous") {
        return status::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        ))
        .into();
    }
    let cs = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|l| pod["status"][*l].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == container.as_str());
    let key = (uid.clone(), container.clone());
    let waiting = cs
        .as_ref()
        .and_then(|c| c["state"]["waiting"]["reason"].as_str().map(str::to_string));
    let Some(log) = st.logs.get(&key).filter(|_| waiting.is_none()) else {
        let reason = waiting.unwrap_or_else(|| "ContainerCreating".to_string());
        return status::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        ))
        .into();
    };
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let since_ns = match (since_secs, since_time) {
        (Some(s), _) => Some(now - s * 1_000_000_000),
        (None, t) => t,
    };
    let opts = LogOptions {
        follow: req.flag("follow"),
        timestamps: req.flag("timestamps"),
        since_ns,
        tail,
        limit_bytes: limit,
        stream,
        trimmed: st.kubelet.trimmed_timestamps,
    };
    if !opts.follow {
        return Answer::Text(Bytes::from(logs::read(log, &opts)));
    }
    let start = opts.start(log);
    let rotations = log.rotations;
    let follow_end = st.kubelet.follow_end;
    drop(st);
    let (tx, rx) = mpsc::channel(64);
    let shared = shared.clone();
    tokio::spawn(follow(
        shared, key, ns, name, uid, opts, start, rotations, follow_end, tx,
    ));
    Answer::Stream("text/plain", rx)
}

/// A follow stream: what is there, then new entries until the container has ended.
#[allow(clippy::too_many_arguments)]
async fn follow(
    shared: Arc<Shared>,
    key: (String, String),
    ns: String,
    name: String,
    uid: String,
    opts: LogOptions,
    mut pos: usize,
    mut rotations: u64,
    follow_end: Option<FollowEnd>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut sent_entries = 0usize;
    let mut left = opts.limit_bytes.map(|l| l.max(0) as usize);
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (chunk, end) = {
            let st = shared.state.lock();
            let alive = st
                .store
                .get(Kind::Pod, &ns, &name)
                .is_some_and(|p| meta(p, "uid") == uid);
            let Some(log) = st.logs.get(&key).filter(|_| alive) else {
                return;
            };
            let mut end = false;
            if log.rotations > rotations {
                if follow_end == Some(FollowEnd::AtRotation) {
                    return;
                }
                rotations = log.rotations;
                // The kubelet reopens the new file: what it had not read of the old one is lost.
                pos = pos.max(log.file_start);
            }
            let mut chunk = Vec::new();
            while pos < log.entries.len() {
                let e = &log.entries[pos];
                if e.fragment {
                    // An unfinished last line: a follow read never sends it.
                    break;
                }
                pos += 1;
                if opts.wants(e) {
                    chunk.extend(e.render(opts.timestamps, opts.trimmed));
                    sent_entries += 1;
                    if let FollowEnd::AfterEntries(n) =
                        follow_end.unwrap_or(FollowEnd::AfterEntries(usize::MAX))
                        && sent_entries >= n
                    {
                        end = true;
                        break;
                    }
                }
            }
            if log.done && (pos >= log.entries.len() || log.entries[pos].fragment) {
                end = true;
            }
            (chunk, end)
        };
        if !chunk.is_empty() {
            let mut chunk = chunk;
            if let Some(l) = left.as_mut() {
                chunk.truncate(*l);
                *l -= chunk.len();
            }
            if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            if left == Some(0) {
                return;
            }
        }
        if end || tx.is_closed() {
            return;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Force-deletes (grace 0) or evicts as the TTL controller or node lifecycle would.
pub fn expire(st: &mut State, ns: &str, name: &str) -> Result<(), ApiError> {
    let Some(job) = st.store.get(Kind::Job, ns, name).cloned() else {
        return Err(status::not_found(info(Kind::Job), name));
    };
    controllers::expire_job(st, &job);
    Ok(())
}
