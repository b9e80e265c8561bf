//! What the apiserver does to objects itself: defaulting, validation, admission, metadata on
//! create, update rules, and deletion (graceful, finalizers, propagation, preconditions).

use serde_json::{Value, json};

use super::resources::{Kind, ResInfo, info};
use super::state::{State, now_rfc3339};
use super::status::{self, ApiError, Cause};
use super::store::meta;
use super::validate;

/// The finalizer the Job controller puts on its pods until it has counted them.
pub const JOB_TRACKING: &str = "batch.kubernetes.io/job-tracking";

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if let Some(o) = obj.as_object_mut() {
        o.entry(key.to_string()).or_insert(v);
    }
}

/// The kubelet's image pull policy default: Always for `:latest` or no tag.
fn pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else if !last.contains(':') || last.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// Pod spec defaults, as the apiserver fills them in.
pub fn default_pod_spec(spec: &mut Value) {
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
    ] {
        set_default(spec, k, v);
    }
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                let image = c["image"].as_str().unwrap_or_default().to_string();
                for (k, v) in [
                    ("terminationMessagePath", json!("/dev/termination-log")),
                    ("terminationMessagePolicy", json!("File")),
                    ("imagePullPolicy", json!(pull_policy(&image))),
                    ("resources", json!({})),
                ] {
                    set_default(c, k, v);
                }
            }
        }
    }
}

/// 422 causes of a pod spec at `path` ("spec" or "spec.template.spec").
fn validate_pod_spec(causes: &mut Vec<Cause>, spec: &Value, path: &str, job: bool) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(Cause::required(&format!("{path}.containers"), ""));
    }
    let mut names = Vec::new();
    for (list, cs) in [
        (
            "initContainers",
            spec.get("initContainers").and_then(Value::as_array),
        ),
        ("containers", containers),
    ] {
        for (i, c) in cs.into_iter().flatten().enumerate() {
            let field = format!("{path}.{list}[{i}]");
            let name = c["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                causes.push(Cause::required(&format!("{field}.name"), ""));
            } else if !validate::dns_label(name) {
                causes.push(Cause::invalid(
                    &format!("{field}.name"),
                    &c["name"],
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                ));
            } else if names.contains(&name) {
                causes.push(Cause {
                    field: format!("{field}.name"),
                    reason: "FieldValueDuplicate",
                    message: format!("Duplicate value: \"{name}\""),
                });
            }
            names.push(name);
            if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
                causes.push(Cause::required(&format!("{field}.image"), ""));
            }
        }
    }
    let rp = spec["restartPolicy"].as_str().unwrap_or("Always");
    if job && rp != "Never" && rp != "OnFailure" {
        causes.push(Cause::unsupported(
            &format!("{path}.restartPolicy"),
            rp,
            &["OnFailure", "Never"],
        ));
    }
    if let Some(ads) = spec.get("activeDeadlineSeconds")
        && ads
            .as_i64()
            .is_none_or(|v| !(1..=4_294_967_295).contains(&v))
    {
        causes.push(Cause::invalid(
            &format!("{path}.activeDeadlineSeconds"),
            ads,
            "must be between 1 and 4294967295, inclusive",
        ));
    }
}

/// Prepares a new object for storing: name, namespace, kind, metadata, defaults, validation,
/// admission. `ns` is "" for cluster-scoped resources.
pub fn prepare_create(
    st: &mut State,
    res: &ResInfo,
    ns: &str,
    mut obj: Value,
) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(status::bad_request(
            "the body of the request must be an object",
        ));
    }
    if obj["metadata"].is_null() {
        obj["metadata"] = json!({});
    }
    if let Some(k) = obj["kind"].as_str()
        && k != res.kind_name
    {
        return Err(status::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({}), or kind {k} is not {}",
            obj["apiVersion"].as_str().unwrap_or_default(),
            res.api_version(),
            res.kind_name
        )));
    }
    if res.namespaced {
        let body_ns = meta(&obj, "namespace");
        if !body_ns.is_empty() && body_ns != ns {
            return Err(status::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if st.store.get(Kind::Namespace, "", ns).is_none() {
            return Err(status::namespace_not_found(ns));
        }
        obj["metadata"]["namespace"] = json!(ns);
    }
    if meta(&obj, "name").is_empty() {
        let gen_name = meta(&obj, "generateName").to_string();
        if !gen_name.is_empty() {
            obj["metadata"]["name"] = json!(format!("{gen_name}{}", random_suffix()));
        }
    }
    let name = meta(&obj, "name").to_string();
    let mut causes = Vec::new();
    let max = match res.kind {
        // A Job's name becomes a label value of its pods.
        Kind::Job | Kind::Service => 63,
        _ => 253,
    };
    validate::name(&mut causes, &name, res.kind == Kind::Service, max);
    validate::labels(
        &mut causes,
        "metadata.labels",
        obj["metadata"].get("labels"),
    );
    match res.kind {
        Kind::Job => prepare_job(&mut obj, &mut causes),
        Kind::Pod => {
            validate_pod_spec(&mut causes, &obj["spec"], "spec", false);
            default_pod_spec(&mut obj["spec"]);
        }
        _ => {}
    }
    if !causes.is_empty() {
        return Err(status::invalid(res.kind_name, res.group, &name, causes));
    }
    if st.store.get(res.kind, ns, &name).is_some() {
        return Err(status::already_exists(res, &name));
    }
    if res.kind == Kind::Pod {
        admit_pod(st, &name, &obj)?;
        obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])});
    }
    let m = &mut obj["metadata"];
    m["uid"] = json!(uuid::Uuid::new_v4().to_string());
    m["creationTimestamp"] = json!(now_rfc3339());
    if let Some(o) = m.as_object_mut() {
        o.remove("deletionTimestamp");
        o.remove("resourceVersion");
        if res.kind == Kind::Job {
            o.insert("generation".into(), json!(1));
        }
    }
    if res.kind == Kind::Job {
        label_job(&mut obj);
    }
    Ok(obj)
}

/// The 5 characters the apiserver appends to a generateName.
pub fn random_suffix() -> String {
    use rand::Rng;
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHANUMS[rng.random_range(0..ALPHANUMS.len())] as char)
        .collect()
}

fn qos_class(spec: &Value) -> &'static str {
    let cs: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let any = cs.iter().any(|c| {
        c["resources"]["requests"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
            || c["resources"]["limits"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = cs.iter().all(|c| {
        let l = &c["resources"]["limits"];
        let r = &c["resources"]["requests"];
        ["cpu", "memory"]
            .iter()
            .all(|k| !l[k].is_null() && (r[k].is_null() || r[k] == l[k]))
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Job defaults, generated selector and labels, and validation.
fn prepare_job(job: &mut Value, causes: &mut Vec<Cause>) {
    let spec = &mut job["spec"];
    if !spec.is_object() {
        causes.push(Cause::required("spec.template", ""));
        return;
    }
    for (k, v) in [
        ("parallelism", json!(1)),
        ("completions", json!(1)),
        ("backoffLimit", json!(6)),
        ("completionMode", json!("NonIndexed")),
        ("suspend", json!(false)),
        ("podReplacementPolicy", json!("TerminatingOrFailed")),
        ("manualSelector", Value::Null),
    ] {
        if !v.is_null() {
            set_default(spec, k, v);
        }
    }
    if spec["template"]["spec"].is_null() {
        causes.push(Cause::required("spec.template.spec", ""));
        return;
    }
    validate_pod_spec(
        causes,
        &spec["template"]["spec"],
        "spec.template.spec",
        true,
    );
    validate::labels(
        causes,
        "spec.template.metadata.labels",
        spec["template"]["metadata"].get("labels"),
    );
    for f in [
        "backoffLimit",
        "parallelism",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        if let Some(v) = spec.get(f)
            && v.as_i64()
                .is_none_or(|n| n < 0 || (f == "activeDeadlineSeconds" && n == 0))
        {
            let detail = if f == "activeDeadlineSeconds" {
                "must be greater than 0"
            } else {
                "must be greater than or equal to 0"
            };
            causes.push(Cause::invalid(&format!("spec.{f}"), v, detail));
        }
    }
    default_pod_spec(&mut spec["template"]["spec"]);
}

/// Adds the Job's generated selector and pod labels, once its uid is final.
pub fn label_job(job: &mut Value) {
    let uid = meta(job, "uid").to_string();
    let name = meta(job, "name").to_string();
    let spec = &mut job["spec"];
    spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    if spec["template"]["metadata"].is_null() {
        spec["template"]["metadata"] = json!({});
    }
    let labels = &mut spec["template"]["metadata"]["labels"];
    if labels.is_null() {
        *labels = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[k] = json!(v);
    }
    if let Some(l) = job["metadata"]["labels"].as_object_mut() {
        l.entry("batch.kubernetes.io/controller-uid")
            .or_insert(json!(uid));
        l.entry("batch.kubernetes.io/job-name")
            .or_insert(json!(name));
        l.entry("controller-uid").or_insert(json!(uid));
        l.entry("job-name").or_insert(json!(name));
    } else {
        job["metadata"]["labels"] = json!({
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        });
    }
}

/// Admission plugins on pod creation: RuntimeClass.
pub fn admit_pod(st: &State, name: &str, pod: &Value) -> Result<(), ApiError> {
    if let Some(rc) = pod["spec"]["runtimeClassName"].as_str()
        && st.store.get(Kind::RuntimeClass, "", rc).is_none()
    {
        return Err(status::admission_forbidden(
            info(Kind::Pod),
            name,
            &format!("pod rejected: RuntimeClass \"{rc}\" not found"),
        ));
    }
    Ok(())
}

/// Checks an update of `old` to `new` (already merged); fixes what the user may not change
/// (status through the main resource, metadata the server owns).
pub fn check_update(
    res: &ResInfo,
    old: &Value,
    new: &mut Value,
    subresource: Option<&str>,
) -> Result<(), ApiError> {
    let name = meta(old, "name").to_string();
    // What the server owns.
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "namespace",
        "name",
        "generation",
    ] {
        new["metadata"][k] = old["metadata"][k].clone();
        if new["metadata"][k].is_null()
            && let Some(m) = new["metadata"].as_object_mut()
        {
            m.remove(k);
        }
    }
    new["kind"] = old["kind"].clone();
    new["apiVersion"] = old["apiVersion"].clone();
    if subresource == Some("status") {
        // Only the status changes through /status.
        let status = new["status"].clone();
        *new = old.clone();
        new["status"] = status;
        return Ok(());
    }
    if !old["status"].is_null() {
        new["status"] = old["status"].clone();
    }
    let mut causes = Vec::new();
    validate::labels(
        &mut causes,
        "metadata.labels",
        new["metadata"].get("labels"),
    );
    match res.kind {
        Kind::Pod => check_pod_update(old, new, &mut causes),
        Kind::Job => check_job_update(old, new, &mut causes),
        _ => {}
    }
    if !causes.is_empty() {
        return Err(status::invalid(res.kind_name, res.group, &name, causes));
    }
    if res.kind == Kind::Job && old["spec"] != new["spec"] {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(g + 1);
    }
    Ok(())
}

fn check_pod_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let o = &old["spec"]["activeDeadlineSeconds"];
    let n = &new["spec"]["activeDeadlineSeconds"];
    match (o.as_i64(), n) {
        (_, Value::Number(num)) => {
            let v = num.as_i64().unwrap_or(-1);
            if !(0..=i64::from(i32::MAX)).contains(&v) {
                causes.push(Cause::invalid(
                    "spec.activeDeadlineSeconds",
                    n,
                    "must be between 0 and 2147483647, inclusive",
                ));
                return;
            }
            if let Some(old_v) = o.as_i64()
                && old_v < v
            {
                causes.push(Cause::invalid(
                    "spec.activeDeadlineSeconds",
                    n,
                    "must be less than or equal to previous value",
                ));
                return;
            }
            if v == 0 {
                causes.push(Cause::invalid(
                    "spec.activeDeadlineSeconds",
                    n,
                    "must be between 1 and 4294967295, inclusive",
                ));
                return;
            }
        }
        (Some(_), _) => {
            causes.push(Cause::invalid(
                "spec.activeDeadlineSeconds",
                &Value::Null,
                "must not update from a positive integer to nil value",
            ));
            return;
        }
        _ => {}
    }
    // Everything else in the spec but images and new tolerations is immutable.
    let mut a = old["spec"].clone();
    let mut b = new["spec"].clone();
    for s in [&mut a, &mut b] {
        if let Some(m) = s.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
        }
        for list in ["initContainers", "containers"] {
            if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    c["image"] = Value::Null;
                }
            }
        }
    }
    if a != b {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

fn check_job_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    for f in [
        "selector",
        "completions",
        "completionMode",
        "podFailurePolicy",
    ] {
        if old["spec"][f] != new["spec"][f] {
            causes.push(Cause::invalid(
                &format!("spec.{f}"),
                &new["spec"][f],
                "field is immutable",
            ));
        }
    }
    if old["spec"]["template"] != new["spec"]["template"] {
        causes.push(Cause::invalid(
            "spec.template",
            &Value::String("core.PodTemplateSpec{...}".into()),
            "field is immutable",
        ));
    }
    for f in [
        "backoffLimit",
        "parallelism",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        if let Some(v) = new["spec"].get(f)
            && !v.is_null()
            && v.as_i64().is_none_or(|n| n < 0)
        {
            causes.push(Cause::invalid(
                &format!("spec.{f}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// What a DELETE asks for (its DeleteOptions).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace: Option<i64>,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    pub fn parse(body: &Value, query: &[(String, String)]) -> Result<DeleteOptions, ApiError> {
        let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut o = DeleteOptions {
            grace: body["gracePeriodSeconds"].as_i64(),
            propagation: body["propagationPolicy"].as_str().map(str::to_string),
            uid: body["preconditions"]["uid"].as_str().map(str::to_string),
            resource_version: body["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
        };
        if let Some(g) = q("gracePeriodSeconds") {
            o.grace =
                Some(g.parse().map_err(|_| {
                    status::bad_request(format!("invalid gracePeriodSeconds {g:?}"))
                })?);
        }
        if let Some(p) = q("propagationPolicy") {
            o.propagation = Some(p);
        }
        if let Some(orphan) = body["orphanDependents"].as_bool() {
            o.propagation = Some(if orphan { "Orphan" } else { "Background" }.into());
        }
        if let Some(p) = &o.propagation
            && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
        {
            return Err(status::invalid(
                "DeleteOptions",
                "",
                "",
                vec![Cause::unsupported(
                    "propagationPolicy",
                    p,
                    &["Background", "Foreground", "Orphan"],
                )],
            ));
        }
        if o.grace.is_some_and(|g| g < 0) {
            o.grace = Some(0);
        }
        Ok(o)
    }
}

/// Deletes an object as the apiserver's registry does; answers the object when it stays
/// (graceful deletion, finalizers), else a Success Status.
pub fn delete(
    st: &mut State,
    res: &ResInfo,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let Some(obj) = st.store.get(res.kind, ns, name).cloned() else {
        return Err(status::not_found(res, name));
    };
    if let Some(uid) = &opts.uid
        && uid != meta(&obj, "uid")
    {
        return Err(status::conflict(
            res,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta(&obj, "uid")
            ),
        ));
    }
    if let Some(rv) = &opts.resource_version
        && rv != meta(&obj, "resourceVersion")
    {
        return Err(status::conflict(
            res,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta(&obj, "resourceVersion")
            ),
        ));
    }
    let mut obj = obj;
    // Jobs keep the old default of orphaning their pods when nobody says otherwise.
    let propagation = opts.propagation.clone().unwrap_or_else(|| {
        if res.kind == Kind::Job {
            "Orphan".into()
        } else {
            "Background".into()
        }
    });
    let mut finalizers: Vec<Value> = obj["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let already_deleting = !obj["metadata"]["deletionTimestamp"].is_null();
    if !already_deleting && res.kind != Kind::Pod {
        let add = match propagation.as_str() {
            "Orphan" => Some("orphan"),
            "Foreground" => Some("foregroundDeletion"),
            _ => None,
        };
        if let Some(f) = add
            && res.kind == Kind::Job
            && !finalizers.iter().any(|x| x == f)
        {
            finalizers.push(json!(f));
        }
    }
    let grace = if res.kind == Kind::Pod {
        let running = !obj["spec"]["nodeName"].is_null()
            && !matches!(
                obj["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
        if running {
            opts.grace.unwrap_or_else(|| {
                obj["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30)
            })
        } else {
            0
        }
    } else {
        0
    };
    let kubelet_busy =
        res.kind == Kind::Pod && st.runtimes.get(meta(&obj, "uid")).is_some_and(|r| !r.done);
    // A grace period of 0 asked for is a force delete: gone at once, whatever still runs.
    if finalizers.is_empty() && grace == 0 && (!kubelet_busy || opts.grace == Some(0)) {
        if let Some(r) = st.runtimes.get(meta(&obj, "uid")) {
            let _ = r.kill.send(Some(super::state::Kill {
                grace: std::time::Duration::ZERO,
            }));
        }
        st.store.remove(res.kind, ns, name);
        return Ok(deleted_status(res, name, meta(&obj, "uid")));
    }
    if already_deleting {
        // A second delete may only shorten a pod's grace period.
        let old = obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0);
        if grace < old {
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let stored = st.store.put(res.kind, obj);
            st.kill_pod(&stored, grace);
            return Ok(stored);
        }
        return Ok(obj);
    }
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(grace);
    obj["metadata"]["deletionTimestamp"] =
        json!(deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    obj["metadata"]["finalizers"] = json!(finalizers);
    if finalizers.is_empty()
        && let Some(m) = obj["metadata"].as_object_mut()
    {
        m.remove("finalizers");
    }
    let stored = st.store.put(res.kind, obj);
    if res.kind == Kind::Pod {
        st.kill_pod(&stored, grace);
    }
    Ok(stored)
}

impl State {
    /// Tells the kubelet to stop a pod's containers within `grace` seconds.
    pub fn kill_pod(&mut self, pod: &Value, grace: i64) {
        if let Some(r) = self.runtimes.get(meta(pod, "uid")) {
            let g = std::time::Duration::from_secs(grace.max(0) as u64);
            let shorter = r.kill.borrow().is_none_or(|k| g < k.grace);
            if shorter {
                let _ = r.kill.send(Some(super::state::Kill { grace: g }));
            }
        }
    }
}

/// The success Status of an immediate delete.
pub fn deleted_status(res: &ResInfo, name: &str, uid: &str) -> Value {
    let mut d = json!({"name": name, "kind": res.plural, "uid": uid});
    if !res.group.is_empty() {
        d["group"] = json!(res.group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": d,
    })
}
