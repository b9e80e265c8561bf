//! A sandbox spec as a `batch/v1` Job (pure): created suspended, one pod, never retried, the
//! operator's `pod_template` underneath, berth's identity, limits and security on top.
//!
//! Merge rules (as Oz's, so a template written for it works): `restartPolicy` is `Never`;
//! berth's init containers come before the template's, its volumes after the template's; a
//! template container named `task` is the task's container (berth sets image, command, args,
//! workdir, env on top of it, appends its mounts, and replaces resources and security);
//! everything else (service account, node selector, tolerations, image pull secrets, priority
//! class) comes from the template only. `automountServiceAccountToken` and
//! `enableServiceLinks` are off unless the template says otherwise: a task has no business
//! with the cluster's API.

use serde_json::{Map, Value, json};

use super::names::{Ids, TASK_CONTAINER};
use crate::config::KubernetesBackend;
use crate::spec::SandboxSpec;
use crate::spec::policy::Security;

/// Where a copy init container puts a sidecar image's files.
const SIDECAR_COPY_PATH: &str = "/berth-sidecar";

/// Copies the sidecar image's filesystem (but the kernel's and the target itself) into the
/// volume. Needs `/bin/sh` and `cp` in the sidecar image.
const SIDECAR_COPY: &str = "set -e; for f in /* /.[!.]*; do case \"$f\" in /proc|/sys|/dev|/berth-sidecar|'/.[!.]*') ;; *) cp -a \"$f\" /berth-sidecar/ ;; esac; done";

/// Label on the pod saying which egress it was given (`open`, `none`, `allowlist`): what a
/// NetworkPolicy selects.
pub const LABEL_EGRESS: &str = "berth.egress";

/// The Job for `spec` (its name decided by the caller).
pub fn job(name: &str, spec: &SandboxSpec, k: &KubernetesBackend) -> Value {
    let ids = Ids::from_labels(&spec.labels);
    let mut labels = k.extra_labels.clone();
    labels.extend(ids.labels());
    let mut annotations = k.extra_annotations.clone();
    annotations.extend(ids.annotations());
    let mut pod_labels = labels.clone();
    pod_labels.insert(LABEL_EGRESS.into(), egress_label(spec).into());
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name, "labels": labels, "annotations": annotations },
        "spec": {
            "suspend": true,
            "backoffLimit": 0,
            "activeDeadlineSeconds": k.active_deadline.as_secs().max(1),
            "ttlSecondsAfterFinished": k.ttl_after_finished.as_secs(),
            "template": {
                "metadata": { "labels": pod_labels, "annotations": annotations },
                "spec": pod_spec(spec, k),
            },
        },
    })
}

fn egress_label(spec: &SandboxSpec) -> &'static str {
    match spec.network {
        crate::spec::Network::Engine(_) => "open",
        crate::spec::Network::None => "none",
        crate::spec::Network::Sealed { .. } => "allowlist",
    }
}

/// The pod: the template, then berth's parts.
fn pod_spec(spec: &SandboxSpec, k: &KubernetesBackend) -> Value {
    let mut pod = match &k.pod_template {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    pod.insert("restartPolicy".into(), json!("Never"));
    pod.insert(
        "terminationGracePeriodSeconds".into(),
        json!(k.stop_grace_period.as_secs()),
    );
    pod.entry("automountServiceAccountToken")
        .or_insert(json!(false));
    pod.entry("enableServiceLinks").or_insert(json!(false));
    if let Some(rc) = &spec.security.runtime {
        pod.insert("runtimeClassName".into(), json!(rc));
    }
    let mounts = task_mounts(spec);
    let env = env_of(spec);
    let resources = resources(spec);
    let security = container_security(&spec.security);
    let pull = k.image_pull_policy.as_str();

    let mut inits: Vec<Value> = spec
        .sidecars
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "name": format!("sidecar-{i}"),
                "image": s.mount.image.to_string(),
                "imagePullPolicy": pull,
                "command": ["/bin/sh", "-c", SIDECAR_COPY],
                "volumeMounts": [{ "name": format!("sidecar-{i}"), "mountPath": SIDECAR_COPY_PATH }],
                "resources": resources,
            })
        })
        .collect();
    inits.extend(spec.steps.iter().enumerate().map(|(n, s)| {
        json!({
            "name": format!("step-{n}"),
            "image": spec.image,
            "imagePullPolicy": pull,
            "command": s.argv,
            "workingDir": s.workdir,
            "env": env,
            "volumeMounts": mounts,
            "resources": resources,
            "securityContext": security,
        })
    }));
    if let Some(Value::Array(theirs)) = pod.get("initContainers") {
        inits.extend(theirs.iter().cloned());
    }
    if !inits.is_empty() {
        pod.insert("initContainers".into(), Value::Array(inits));
    }

    let mut containers = match pod.remove("containers") {
        Some(Value::Array(c)) => c,
        _ => Vec::new(),
    };
    let theirs = containers
        .iter()
        .position(|c| c.get("name").and_then(Value::as_str) == Some(TASK_CONTAINER));
    let base = match theirs {
        Some(i) => containers.remove(i),
        None => json!({ "name": TASK_CONTAINER }),
    };
    let task = task_container(base, spec, pull, &env, &mounts, &resources, &security);
    containers.insert(0, task);
    pod.insert("containers".into(), Value::Array(containers));

    let mut volumes = match pod.remove("volumes") {
        Some(Value::Array(v)) => v,
        _ => Vec::new(),
    };
    volumes.extend(own_volumes(spec));
    pod.insert("volumes".into(), Value::Array(volumes));
    Value::Object(pod)
}

fn task_container(
    base: Value,
    spec: &SandboxSpec,
    pull: &str,
    env: &Value,
    mounts: &Value,
    resources: &Value,
    security: &Value,
) -> Value {
    let mut c = match base {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    c.insert("image".into(), json!(spec.image));
    c.insert("imagePullPolicy".into(), json!(pull));
    // The image's entrypoint is kept (as on Docker): the command is its argument list.
    c.remove("command");
    c.insert("args".into(), json!(spec.command));
    c.insert("workingDir".into(), json!(spec.workdir));
    // The template's env first; berth's entries win (the API keeps the last of a name).
    let mut all_env = match c.remove("env") {
        Some(Value::Array(e)) => e,
        _ => Vec::new(),
    };
    if let Value::Array(ours) = env {
        let names: std::collections::HashSet<&str> = ours
            .iter()
            .filter_map(|e| e.get("name").and_then(Value::as_str))
            .collect();
        all_env.retain(|e| {
            e.get("name")
                .and_then(Value::as_str)
                .is_none_or(|n| !names.contains(n))
        });
        all_env.extend(ours.iter().cloned());
    }
    c.insert("env".into(), Value::Array(all_env));
    let mut all_mounts = match c.remove("volumeMounts") {
        Some(Value::Array(m)) => m,
        _ => Vec::new(),
    };
    if let Value::Array(ours) = mounts {
        all_mounts.extend(ours.iter().cloned());
    }
    c.insert("volumeMounts".into(), Value::Array(all_mounts));
    c.insert("resources".into(), resources.clone());
    c.insert("securityContext".into(), security.clone());
    c.insert("name".into(), json!(TASK_CONTAINER));
    Value::Object(c)
}

/// `KEY=VALUE` entries as the API's env list (a later entry of a name wins, as on Docker).
fn env_of(spec: &SandboxSpec) -> Value {
    let mut seen: Vec<(String, String)> = Vec::new();
    for e in &spec.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        seen.retain(|(n, _)| n != k);
        seen.push((k.to_string(), v.to_string()));
    }
    Value::Array(
        seen.into_iter()
            .map(|(name, value)| json!({ "name": name, "value": value }))
            .collect(),
    )
}

/// Requests equal to limits, so the pod gets what the policy decided and no more.
fn resources(spec: &SandboxSpec) -> Value {
    let mut q = Map::new();
    if let Some(n) = spec.limits.nano_cpus {
        q.insert("cpu".into(), json!(format!("{}m", (n / 1_000_000).max(1))));
    }
    if let Some(m) = spec.limits.memory_bytes {
        q.insert("memory".into(), json!(m.to_string()));
    }
    if q.is_empty() {
        json!({})
    } else {
        json!({ "requests": q, "limits": q })
    }
}

/// `user[:group]` as numeric ids; a named user cannot be expressed (the API takes numbers).
fn numeric_user(user: Option<&str>) -> (Option<i64>, Option<i64>) {
    let Some(u) = user else { return (None, None) };
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    (uid.parse().ok(), gid.and_then(|g| g.parse().ok()))
}

/// The profile as a container `securityContext`.
fn container_security(s: &Security) -> Value {
    let mut c = Map::new();
    let (uid, gid) = numeric_user(s.user.as_deref());
    if let Some(u) = uid {
        c.insert("runAsUser".into(), json!(u));
        c.insert("runAsNonRoot".into(), json!(u != 0));
    }
    if let Some(g) = gid {
        c.insert("runAsGroup".into(), json!(g));
    }
    if s.no_new_privileges {
        c.insert("allowPrivilegeEscalation".into(), json!(false));
    }
    if s.read_only_rootfs {
        c.insert("readOnlyRootFilesystem".into(), json!(true));
    }
    let caps = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|c| c.trim_start_matches("CAP_").to_uppercase())
            .collect()
    };
    let mut capabilities = Map::new();
    if !s.cap_drop.is_empty() {
        capabilities.insert("drop".into(), json!(caps(&s.cap_drop)));
    }
    if !s.cap_add.is_empty() {
        capabilities.insert("add".into(), json!(caps(&s.cap_add)));
    }
    if !capabilities.is_empty() {
        c.insert("capabilities".into(), Value::Object(capabilities));
    }
    c.insert("seccompProfile".into(), json!({ "type": "RuntimeDefault" }));
    Value::Object(c)
}

/// The task's own mounts: the workspace, sidecars, in-memory paths.
fn task_mounts(spec: &SandboxSpec) -> Value {
    let mut m = vec![json!({ "name": "workspace", "mountPath": spec.workdir })];
    for (i, s) in spec.sidecars.iter().enumerate() {
        m.push(json!({
            "name": format!("sidecar-{i}"),
            "mountPath": s.mount.mount_path,
            "readOnly": !s.mount.read_write,
        }));
    }
    for (i, (path, _)) in spec.security.tmpfs.iter().enumerate() {
        m.push(json!({ "name": format!("tmpfs-{i}"), "mountPath": path }));
    }
    Value::Array(m)
}

/// `size=` of tmpfs options, as a quantity.
fn tmpfs_size(opts: &str) -> Option<String> {
    opts.split(',')
        .find_map(|o| o.strip_prefix("size="))
        .map(|s| s.to_string())
}

fn own_volumes(spec: &SandboxSpec) -> Vec<Value> {
    let mut v = vec![json!({ "name": "workspace", "emptyDir": {} })];
    for i in 0..spec.sidecars.len() {
        v.push(json!({ "name": format!("sidecar-{i}"), "emptyDir": {} }));
    }
    for (i, (_, opts)) in spec.security.tmpfs.iter().enumerate() {
        let mut e = json!({ "medium": "Memory" });
        if let Some(size) = tmpfs_size(opts) {
            e["sizeLimit"] = json!(size);
        }
        v.push(json!({ "name": format!("tmpfs-{i}"), "emptyDir": e }));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureReason;
    use crate::spec::image::ImageRef;
    use crate::spec::owner::Owner;
    use crate::spec::policy::Limits;
    use crate::spec::{InitStep, LABEL_EXECUTION, LABEL_TASK, Network, Sidecar, SidecarMount};

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn spec() -> SandboxSpec {
        let mut labels = Owner::new("host-1", "berth-0").labels();
        labels.insert(LABEL_TASK.into(), "T1".into());
        labels.insert(LABEL_EXECUTION.into(), "E1".into());
        SandboxSpec {
            image: "docker.io/library/busybox:latest".into(),
            command: strs(&["echo", "hi"]),
            hold: None,
            env: strs(&["A=1", "B=x=y", "A=2"]),
            workdir: "/workspace".into(),
            labels,
            limits: Limits {
                nano_cpus: Some(1_500_000_000),
                memory_bytes: Some(1 << 30),
            },
            sidecars: Vec::new(),
            volumes: Vec::new(),
            security: Security::default(),
            network: Network::Engine("bridge".into()),
            steps: Vec::new(),
        }
    }

    fn pod(job: &Value) -> &Value {
        &job["spec"]["template"]["spec"]
    }

    #[test]
    fn a_plain_task_is_a_suspended_job_of_one_pod_never_retried() {
        let k = KubernetesBackend::default();
        let j = job("berth-t1-abc", &spec(), &k);
        assert_eq!(j["metadata"]["name"], "berth-t1-abc");
        assert_eq!(j["spec"]["suspend"], true, "journal before anything runs");
        assert_eq!(j["spec"]["backoffLimit"], 0);
        assert_eq!(j["spec"]["activeDeadlineSeconds"], 8 * 3600);
        assert_eq!(j["spec"]["ttlSecondsAfterFinished"], 86400);
        let p = pod(&j);
        assert_eq!(p["restartPolicy"], "Never");
        assert_eq!(p["terminationGracePeriodSeconds"], 10);
        assert_eq!(p["automountServiceAccountToken"], false);
        assert_eq!(p["enableServiceLinks"], false);
        let t = &p["containers"][0];
        assert_eq!(t["name"], "task");
        assert_eq!(
            t["args"],
            json!(["echo", "hi"]),
            "the image's entrypoint is kept"
        );
        assert!(t.get("command").is_none());
        assert_eq!(
            t["env"],
            json!([{"name": "B", "value": "x=y"}, {"name": "A", "value": "2"}]),
            "the last entry of a name wins"
        );
        let q = json!({"cpu": "1500m", "memory": "1073741824"});
        assert_eq!(t["resources"], json!({"requests": q, "limits": q}));
        assert_eq!(
            t["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(t["volumeMounts"][0]["mountPath"], "/workspace");
        assert_eq!(
            p["volumes"][0],
            json!({"name": "workspace", "emptyDir": {}})
        );
        assert!(p.get("initContainers").is_none());
        assert!(p.get("runtimeClassName").is_none());
    }

    #[test]
    fn identity_labels_and_annotations_are_on_the_job_and_its_pods() {
        let k = KubernetesBackend {
            extra_labels: [("team".to_string(), "agents".to_string())].into(),
            extra_annotations: [("example.com/x".to_string(), "y".to_string())].into(),
            ..KubernetesBackend::default()
        };
        let j = job("n", &spec(), &k);
        for meta in [&j["metadata"], &j["spec"]["template"]["metadata"]] {
            assert_eq!(
                meta["labels"]["oz-worker-hash"],
                super::super::names::hash("host-1")
            );
            assert_eq!(
                meta["labels"]["oz-execution-hash"],
                super::super::names::hash("E1")
            );
            assert_eq!(meta["labels"]["berth.instance"], "berth-0");
            assert_eq!(meta["labels"]["team"], "agents");
            assert_eq!(meta["annotations"]["berth.dev/execution-id"], "E1");
            assert_eq!(meta["annotations"]["berth.dev/task-id"], "T1");
            assert_eq!(meta["annotations"]["example.com/x"], "y");
        }
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["berth.egress"],
            "open"
        );
    }

    #[test]
    fn the_strict_profile_becomes_a_security_context_and_the_runtime_a_class() {
        let mut s = spec();
        s.security = Security {
            no_new_privileges: true,
            cap_drop: strs(&["ALL"]),
            cap_add: strs(&["CAP_NET_BIND_SERVICE"]),
            read_only_rootfs: true,
            user: Some("65534:65534".into()),
            runtime: Some("gvisor".into()),
            tmpfs: vec![("/tmp".into(), "rw,size=64m".into())],
            ..Security::default()
        };
        let j = job("n", &s, &KubernetesBackend::default());
        let p = pod(&j);
        assert_eq!(p["runtimeClassName"], "gvisor");
        assert_eq!(
            p["containers"][0]["securityContext"],
            json!({
                "runAsUser": 65534, "runAsGroup": 65534, "runAsNonRoot": true,
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            })
        );
        assert_eq!(
            p["containers"][0]["volumeMounts"][1],
            json!({"name": "tmpfs-0", "mountPath": "/tmp"})
        );
        assert_eq!(
            p["volumes"][1],
            json!({"name": "tmpfs-0", "emptyDir": {"medium": "Memory", "sizeLimit": "64m"}})
        );
    }

    #[test]
    fn sidecars_are_copied_by_init_containers_and_steps_run_before_the_task() {
        let mut s = spec();
        s.sidecars = vec![Sidecar {
            mount: SidecarMount {
                image: ImageRef::parse("agent:1").unwrap_or_else(|e| panic!("{e}")),
                mount_path: "/agent".into(),
                read_write: false,
            },
            source: "agent:1".into(),
        }];
        s.steps = vec![InitStep {
            title: "setup 1/1: make".into(),
            argv: strs(&["/bin/sh", "-c", "make"]),
            workdir: "/workspace".into(),
            reason: FailureReason::SetupCommand,
        }];
        let j = job("n", &s, &KubernetesBackend::default());
        let p = pod(&j);
        let inits = p["initContainers"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = inits.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["sidecar-0", "step-0"]);
        assert_eq!(inits[0]["image"], "docker.io/library/agent:1");
        assert_eq!(inits[0]["volumeMounts"][0]["mountPath"], SIDECAR_COPY_PATH);
        assert_eq!(inits[1]["command"], json!(["/bin/sh", "-c", "make"]));
        assert_eq!(inits[1]["image"], s.image);
        assert_eq!(inits[1]["env"], p["containers"][0]["env"]);
        assert_eq!(
            p["containers"][0]["volumeMounts"][1],
            json!({"name": "sidecar-0", "mountPath": "/agent", "readOnly": true})
        );
    }

    #[test]
    fn the_operators_template_lies_underneath() {
        let k = KubernetesBackend {
            pod_template: Some(json!({
                "serviceAccountName": "tasks",
                "automountServiceAccountToken": true,
                "restartPolicy": "OnFailure",
                "nodeSelector": {"pool": "agents"},
                "initContainers": [{"name": "theirs", "image": "x"}],
                "volumes": [{"name": "cache", "emptyDir": {}}],
                "containers": [
                    {"name": "logger", "image": "fluent"},
                    {"name": "task", "image": "ignored", "command": ["ignored"],
                     "env": [{"name": "A", "value": "template"}, {"name": "Z", "value": "z"}],
                     "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
                ],
            })),
            ..KubernetesBackend::default()
        };
        let mut s = spec();
        s.steps = vec![InitStep {
            title: "t".into(),
            argv: strs(&["true"]),
            workdir: "/workspace".into(),
            reason: FailureReason::SetupCommand,
        }];
        let j = job("n", &s, &k);
        let p = pod(&j);
        assert_eq!(p["serviceAccountName"], "tasks");
        assert_eq!(
            p["automountServiceAccountToken"], true,
            "the template's choice"
        );
        assert_eq!(p["restartPolicy"], "Never");
        assert_eq!(p["nodeSelector"]["pool"], "agents");
        let inits: Vec<&str> = p["initContainers"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(inits, ["step-0", "theirs"], "berth's first");
        let names: Vec<&str> = p["containers"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["task", "logger"]);
        let t = &p["containers"][0];
        assert_eq!(t["image"], s.image);
        assert!(t.get("command").is_none());
        assert_eq!(
            t["env"],
            json!([{"name": "Z", "value": "z"}, {"name": "B", "value": "x=y"}, {"name": "A", "value": "2"}])
        );
        assert_eq!(t["volumeMounts"][0]["mountPath"], "/cache");
        assert_eq!(t["volumeMounts"][1]["mountPath"], "/workspace");
        let vols: Vec<&str> = p["volumes"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(vols, ["cache", "workspace"]);
    }

    #[test]
    fn every_job_is_a_valid_job_for_the_api_types() {
        let j = job("n", &spec(), &KubernetesBackend::default());
        let typed: Result<k8s_openapi::api::batch::v1::Job, _> = serde_json::from_value(j);
        assert!(typed.is_ok(), "{typed:?}");
    }
}
