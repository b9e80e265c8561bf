//! `backend.kind` and `backend.kubernetes.*`: which engine runs the sandboxes, and how berth
//! reaches a cluster and shapes the Job of each execution.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::collector::Collector;
use super::raw::{RawEnvEntry, RawKubernetes};

/// Which engine runs the sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A container per execution on one Docker engine.
    Docker,
    /// A `batch/v1` Job per execution on a Kubernetes cluster.
    Kubernetes,
}

/// When the kubelet pulls a task's image (Kubernetes' own names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    /// The value of a container's `imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Kubernetes backend settings.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesBackend {
    /// Where the Jobs run; `None`: the service account's namespace in a cluster, else the
    /// kubeconfig context's, else `default`.
    pub namespace: Option<String>,
    /// Kubeconfig file; `None`: in-cluster service account, else `KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; `None`: the file's current context.
    pub context: Option<String>,
    /// The owner label of this berth's Jobs; `None`: the instance id in `state_dir`.
    pub owner: Option<String>,
    /// Image when the assignment and its environment name none.
    pub default_image: String,
    pub image_pull_policy: ImagePullPolicy,
    /// The operator's PodSpec under every task's pod (validated as a PodSpec).
    pub pod_template: Option<serde_json::Value>,
    /// Operator env for every task.
    pub environment: Vec<(String, String)>,
    /// The pod's `terminationGracePeriodSeconds`: SIGTERM to SIGKILL on a stop.
    pub stop_grace_period: Duration,
    /// The Job's `activeDeadlineSeconds`: bounds a Job even while no berth watches it.
    pub active_deadline: Duration,
    /// The Job's `ttlSecondsAfterFinished`: the cluster removes a finished Job berth never
    /// removed (it must outlast the longest outage berth should recover a tail from).
    pub ttl_after_finished: Duration,
    /// How long a pod may stay unschedulable before the task fails (`0s`: forever).
    pub unschedulable_timeout: Duration,
    /// The Service in front of berth's egress proxy (allowlist tasks reach only it); `None`:
    /// allowlist tasks fail closed.
    pub proxy_service: Option<String>,
    pub extra_labels: BTreeMap<String, String>,
    pub extra_annotations: BTreeMap<String, String>,
}

const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_ACTIVE_DEADLINE: Duration = Duration::from_secs(8 * 3600);
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_UNSCHEDULABLE: Duration = Duration::from_secs(600);

impl Default for KubernetesBackend {
    fn default() -> Self {
        KubernetesBackend {
            namespace: None,
            kubeconfig: None,
            context: None,
            owner: None,
            default_image: super::DEFAULT_IMAGE.to_string(),
            image_pull_policy: ImagePullPolicy::IfNotPresent,
            pod_template: None,
            environment: Vec::new(),
            stop_grace_period: DEFAULT_STOP_GRACE,
            active_deadline: DEFAULT_ACTIVE_DEADLINE,
            ttl_after_finished: DEFAULT_TTL,
            unschedulable_timeout: DEFAULT_UNSCHEDULABLE,
            proxy_service: None,
            extra_labels: BTreeMap::new(),
            extra_annotations: BTreeMap::new(),
        }
    }
}

impl KubernetesBackend {
    /// What `check-config` prints: env values redacted, defaults spelled out.
    pub(super) fn effective(&self) -> serde_json::Value {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        serde_json::json!({
            "namespace": self.namespace.as_deref()
                .unwrap_or("(the service account's, else the kubeconfig context's, else default)"),
            "kubeconfig": self.kubeconfig.as_ref().map(|p| p.display().to_string())
                .unwrap_or_else(|| "(in-cluster service account, else KUBECONFIG or ~/.kube/config)".into()),
            "context": self.context,
            "owner": self.owner.as_deref().unwrap_or("(this instance's id)"),
            "default_image": self.default_image,
            "image_pull_policy": self.image_pull_policy,
            "pod_template": self.pod_template,
            "environment": self.environment.iter().map(|(k, _)| format!("{k}=[REDACTED]")).collect::<Vec<_>>(),
            "stop_grace_period": d(self.stop_grace_period),
            "active_deadline": d(self.active_deadline),
            "ttl_after_finished": d(self.ttl_after_finished),
            "unschedulable_timeout": d(self.unschedulable_timeout),
            "proxy_service": self.proxy_service,
            "extra_labels": self.extra_labels,
            "extra_annotations": self.extra_annotations,
        })
    }
}

/// An RFC 1123 label (namespaces, Service and Job names): at most 63 lowercase letters, digits
/// and '-', starting and ending with a letter or digit.
pub fn valid_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A label value: empty, or at most 63 letters, digits, '-', '_' and '.', starting and ending
/// with a letter or digit.
pub fn valid_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain of at most 253
/// characters, the name a non-empty label value.
pub fn valid_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(valid_dns_label));
    prefix_ok && !name.is_empty() && valid_label_value(name)
}

/// Keys of `original` (recursively, non-null values only) that `parsed` lost: fields a typed
/// PodSpec does not have, i.e. typos the apiserver would reject or ignore.
fn unknown_fields(
    original: &serde_json::Value,
    parsed: &serde_json::Value,
    at: &str,
) -> Vec<String> {
    use serde_json::Value;
    match (original, parsed) {
        (Value::Object(o), Value::Object(p)) => o
            .iter()
            .filter(|(_, v)| !v.is_null())
            .flat_map(|(k, v)| {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match p.get(k) {
                    None => vec![path],
                    Some(pv) => unknown_fields(v, pv, &path),
                }
            })
            .collect(),
        (Value::Array(o), Value::Array(p)) => o
            .iter()
            .zip(p)
            .enumerate()
            .flat_map(|(i, (v, pv))| unknown_fields(v, pv, &format!("{at}[{i}]")))
            .collect(),
        _ => Vec::new(),
    }
}

/// Checks a pod template as a PodSpec: every field known, types right. `containers` may be
/// left out (berth adds the task's).
pub fn check_pod_template(template: &serde_json::Value) -> Result<(), String> {
    let mut t = template.clone();
    let Some(obj) = t.as_object_mut() else {
        return Err(
            "is not a mapping (write a PodSpec: serviceAccountName, nodeSelector, tolerations, …)"
                .into(),
        );
    };
    obj.entry("containers")
        .or_insert_with(|| serde_json::json!([]));
    let spec: k8s_openapi::api::core::v1::PodSpec =
        serde_json::from_value(t.clone()).map_err(|e| format!("is not a valid PodSpec: {e}"))?;
    let back = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
    let unknown = unknown_fields(&t, &back, "");
    if !unknown.is_empty() {
        return Err(format!(
            "has fields a PodSpec does not have: {}",
            unknown.join(", ")
        ));
    }
    Ok(())
}

fn string_key(
    c: &mut Collector<'_>,
    key: &str,
    sp: Option<&Spanned<String>>,
    ok: fn(&str) -> bool,
    fix: &str,
) -> Option<String> {
    let sp = sp?;
    if ok(&sp.value) {
        Some(sp.value.clone())
    } else {
        c.at(
            key,
            Some(sp),
            format!("{:?} is not valid here", sp.value),
            fix,
        );
        None
    }
}

fn pull_policy(c: &mut Collector<'_>, sp: Option<&Spanned<String>>) -> ImagePullPolicy {
    match sp.map(|s| (s, s.value.as_str())) {
        None => ImagePullPolicy::IfNotPresent,
        Some((_, "Always")) => ImagePullPolicy::Always,
        Some((_, "IfNotPresent")) => ImagePullPolicy::IfNotPresent,
        Some((_, "Never")) => ImagePullPolicy::Never,
        Some((sp, v)) => {
            c.at(
                "backend.kubernetes.image_pull_policy",
                Some(sp),
                format!("{v:?} is not an image pull policy"),
                "use Always, IfNotPresent or Never (Kubernetes' names)",
            );
            ImagePullPolicy::IfNotPresent
        }
    }
}

fn label_map(
    c: &mut Collector<'_>,
    key: &str,
    map: Option<BTreeMap<String, Spanned<String>>>,
    values_are_labels: bool,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in map.unwrap_or_default() {
        if !valid_label_key(&k) {
            c.at(
                &format!("{key}.{k}"),
                Some(&v),
                format!("{k:?} is not a Kubernetes label key"),
                "use [prefix/]name: name at most 63 letters, digits, '-', '_', '.'",
            );
        } else if k.starts_with("berth.") || k.starts_with("oz-") {
            c.at(
                &format!("{key}.{k}"),
                Some(&v),
                format!("{k:?} is one of berth's own labels"),
                "choose a key that does not start with berth. or oz-",
            );
        } else if values_are_labels && !valid_label_value(&v.value) {
            c.at(
                &format!("{key}.{k}"),
                Some(&v),
                format!("{:?} is not a Kubernetes label value", v.value),
                "at most 63 letters, digits, '-', '_', '.', starting and ending alphanumeric",
            );
        } else {
            out.insert(k, v.value);
        }
    }
    out
}

/// `backend.kubernetes.environment` with the `-e` flags (as for Docker); `-v` host binds
/// have no place on a cluster.
fn environment(
    c: &mut Collector<'_>,
    entries: Option<Vec<RawEnvEntry>>,
    ov: &super::overrides::Overrides,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let out = super::docker::operator_env(
        "backend.kubernetes.environment",
        entries.as_deref(),
        ov,
        host_env,
        c,
    );
    for v in &ov.volumes {
        c.at::<String>(
            "--volume",
            None,
            format!("{v:?}: host binds are the Docker backend's"),
            "on Kubernetes, give the task's pod volumes in backend.kubernetes.pod_template (volumes, and a `task` container's volumeMounts)",
        );
    }
    out
}

/// `backend.kind`.
pub(super) fn kind_of(sp: Option<&Spanned<String>>, c: &mut Collector<'_>) -> BackendKind {
    match sp.map(|s| (s, s.value.as_str())) {
        None | Some((_, "docker")) => BackendKind::Docker,
        Some((_, "kubernetes")) => BackendKind::Kubernetes,
        Some((sp, v)) => {
            c.at(
                "backend.kind",
                Some(sp),
                format!("{v:?} is not a backend"),
                "use docker or kubernetes",
            );
            BackendKind::Docker
        }
    }
}

/// `backend.kubernetes.*`.
pub(super) fn kubernetes_section(
    raw: RawKubernetes,
    ov: &super::overrides::Overrides,
    host_env: &dyn Fn(&str) -> Option<String>,
    c: &mut Collector<'_>,
) -> KubernetesBackend {
    const K: &str = "backend.kubernetes";
    let d = KubernetesBackend::default();
    let duration = |c: &mut Collector<'_>, key: &str, sp: Option<&Spanned<String>>, def, min| {
        c.duration_min(
            &format!("{K}.{key}"),
            sp,
            def,
            min,
            "use a duration such as 30s, 10m or 8h",
        )
    };
    let pod_template = raw
        .pod_template
        .and_then(|sp| match check_pod_template(&sp.value) {
            Ok(()) => Some(sp.value),
            Err(p) => {
                c.at(
                    &format!("{K}.pod_template"),
                    Some(&sp),
                    format!("pod_template {p}"),
                    "write the fields of a Kubernetes PodSpec (kubectl explain pod.spec)",
                );
                None
            }
        });
    let kubeconfig = raw.kubeconfig.as_ref().and_then(|sp| {
        if std::path::Path::new(&sp.value).is_file() {
            Some(PathBuf::from(&sp.value))
        } else {
            c.at(
                &format!("{K}.kubeconfig"),
                Some(sp),
                format!("{} is not a readable file", sp.value),
                "point it at a kubeconfig file, or leave it out to use the pod's service account",
            );
            None
        }
    });
    KubernetesBackend {
        namespace: string_key(
            c,
            &format!("{K}.namespace"),
            raw.namespace.as_ref(),
            valid_dns_label,
            "use a namespace name: lowercase letters, digits and '-', at most 63",
        ),
        kubeconfig,
        context: raw.context.map(|s| s.value),
        owner: string_key(
            c,
            &format!("{K}.owner"),
            raw.owner.as_ref(),
            |s| !s.is_empty() && valid_label_value(s),
            "use a label value: at most 63 letters, digits, '-', '_', '.' (e.g. the StatefulSet pod's name)",
        ),
        default_image: raw
            .default_image
            .map(|s| s.value)
            .unwrap_or(d.default_image),
        image_pull_policy: pull_policy(c, raw.image_pull_policy.as_ref()),
        pod_template,
        environment: environment(c, raw.environment, ov, host_env),
        stop_grace_period: duration(
            c,
            "stop_grace_period",
            raw.stop_grace_period.as_ref(),
            d.stop_grace_period,
            Duration::ZERO,
        ),
        active_deadline: duration(
            c,
            "active_deadline",
            raw.active_deadline.as_ref(),
            d.active_deadline,
            Duration::from_secs(60),
        ),
        ttl_after_finished: duration(
            c,
            "ttl_after_finished",
            raw.ttl_after_finished.as_ref(),
            d.ttl_after_finished,
            Duration::from_secs(60),
        ),
        unschedulable_timeout: duration(
            c,
            "unschedulable_timeout",
            raw.unschedulable_timeout.as_ref(),
            d.unschedulable_timeout,
            Duration::ZERO,
        ),
        proxy_service: string_key(
            c,
            &format!("{K}.proxy_service"),
            raw.proxy_service.as_ref(),
            valid_dns_label,
            "use the name of a Service in the Jobs' namespace",
        ),
        extra_labels: label_map(c, &format!("{K}.extra_labels"), raw.extra_labels, true),
        extra_annotations: label_map(
            c,
            &format!("{K}.extra_annotations"),
            raw.extra_annotations,
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{errors, load_yaml, one_error, with_key};
    use super::*;

    #[test]
    fn the_backend_is_docker_unless_the_file_says_kubernetes() {
        let c = load_yaml("worker_id: w\n", &with_key()).unwrap();
        assert_eq!(c.backend, BackendKind::Docker);
        let c = load_yaml("worker_id: w\nbackend:\n  kind: kubernetes\n", &with_key()).unwrap();
        assert_eq!(c.backend, BackendKind::Kubernetes);
        assert_eq!(c.kubernetes, KubernetesBackend::default());
        let e = one_error("worker_id: w\nbackend:\n  kind: nomad\n");
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("backend.kind", Some(3))
        );
        assert!(e.fix.contains("docker or kubernetes"), "{e}");
        let e = one_error("worker_id: w\nbackend:\n  kubernetes:\n    namespace: x\n");
        assert_eq!(e.key, "backend.kubernetes", "{e}");
    }

    #[test]
    fn env_flags_reach_the_kubernetes_backend_and_host_binds_are_refused() {
        use super::super::overrides::Overrides;
        use crate::secret::Secret;
        let yaml = "worker_id: w\nbackend:\n  kind: kubernetes\n  kubernetes:\n    environment:\n      - { name: A, value: file }\n";
        let ov = Overrides {
            api_key: Some(Secret::new("k")),
            env: vec!["A=flag".into(), "B=2".into()],
            ..Overrides::default()
        };
        let c = load_yaml(yaml, &ov).unwrap();
        assert_eq!(
            c.kubernetes.environment,
            [("A", "file"), ("A", "flag"), ("B", "2")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .to_vec(),
            "the flags after the file, so they win"
        );
        let ov = Overrides {
            volumes: vec!["/srv:/srv".into()],
            ..ov
        };
        let e = errors(yaml, &ov);
        assert!(
            e.iter()
                .any(|e| e.key == "--volume" && e.fix.contains("pod_template")),
            "{e:?}"
        );
    }

    #[test]
    fn every_kubernetes_key_is_read() {
        let yaml = "worker_id: w
backend:
  kind: kubernetes
  kubernetes:
    namespace: agents
    context: prod
    owner: berth-0
    default_image: busybox:1
    image_pull_policy: Never
    pod_template:
      serviceAccountName: tasks
      nodeSelector: { pool: agents }
    environment:
      - { name: A, value: b }
    stop_grace_period: 30s
    active_deadline: 2h
    ttl_after_finished: 2d
    unschedulable_timeout: 0s
    proxy_service: berth-proxy
    extra_labels: { team: agents }
    extra_annotations: { example.com/note: \"any text\" }
";
        let c = load_yaml(yaml, &with_key()).unwrap().kubernetes;
        assert_eq!(c.namespace.as_deref(), Some("agents"));
        assert_eq!(c.context.as_deref(), Some("prod"));
        assert_eq!(c.owner.as_deref(), Some("berth-0"));
        assert_eq!(c.default_image, "busybox:1");
        assert_eq!(c.image_pull_policy, ImagePullPolicy::Never);
        assert_eq!(
            c.pod_template,
            Some(
                serde_json::json!({"serviceAccountName": "tasks", "nodeSelector": {"pool": "agents"}})
            )
        );
        assert_eq!(c.environment, vec![("A".to_string(), "b".to_string())]);
        assert_eq!(c.stop_grace_period, Duration::from_secs(30));
        assert_eq!(c.active_deadline, Duration::from_secs(7200));
        assert_eq!(c.ttl_after_finished, Duration::from_secs(2 * 86400));
        assert_eq!(c.unschedulable_timeout, Duration::ZERO);
        assert_eq!(c.proxy_service.as_deref(), Some("berth-proxy"));
        assert_eq!(c.extra_labels["team"], "agents");
        assert_eq!(c.extra_annotations["example.com/note"], "any text");
    }

    #[test]
    fn bad_kubernetes_keys_are_all_reported_with_their_lines() {
        let yaml = "worker_id: w
backend:
  kind: kubernetes
  kubernetes:
    namespace: Agents_1
    kubeconfig: /nonexistent/kubeconfig
    image_pull_policy: always
    pod_template: { nodeSelecter: { a: b } }
    active_deadline: 10s
    proxy_service: -proxy
    extra_labels: { berth.owner: x, team: \"not a value\" }
";
        let e = errors(yaml, &with_key());
        let keys: std::collections::BTreeSet<&str> = e.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "backend.kubernetes.namespace",
            "backend.kubernetes.kubeconfig",
            "backend.kubernetes.image_pull_policy",
            "backend.kubernetes.pod_template",
            "backend.kubernetes.active_deadline",
            "backend.kubernetes.proxy_service",
            "backend.kubernetes.extra_labels.berth.owner",
            "backend.kubernetes.extra_labels.team",
        ] {
            assert!(keys.contains(k), "{k} missing from {e:?}");
        }
        assert!(
            e.iter().all(|e| e.location.is_some() && !e.fix.is_empty()),
            "{e:?}"
        );
        let lines: std::collections::BTreeMap<&str, u64> = e
            .iter()
            .map(|e| (e.key.as_str(), e.location.as_ref().map_or(0, |l| l.1)))
            .collect();
        assert_eq!(lines["backend.kubernetes.namespace"], 5);
        assert_eq!(lines["backend.kubernetes.kubeconfig"], 6);
        assert_eq!(lines["backend.kubernetes.image_pull_policy"], 7);
        assert_eq!(lines["backend.kubernetes.pod_template"], 8);
        assert_eq!(lines["backend.kubernetes.active_deadline"], 9);
        assert_eq!(lines["backend.kubernetes.proxy_service"], 10);
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "berth", "berth-tasks", "a1", &"a".repeat(63)] {
            assert!(valid_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!valid_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn label_values_and_keys() {
        for ok in ["", "a", "A.b_c-1", &"x".repeat(63)] {
            assert!(valid_label_value(ok), "{ok}");
        }
        for bad in ["-a", "a-", "a b", "a/b", &"x".repeat(64)] {
            assert!(!valid_label_value(bad), "{bad}");
        }
        for ok in ["team", "example.com/team", "a.b.c/x_y"] {
            assert!(valid_label_key(ok), "{ok}");
        }
        for bad in ["", "/x", "Example.com/x", "a/", "a/b/c"] {
            assert!(!valid_label_key(bad), "{bad}");
        }
    }

    #[test]
    fn pod_templates_are_checked_as_pod_specs() {
        let ok = serde_json::json!({
            "serviceAccountName": "tasks",
            "nodeSelector": {"pool": "agents"},
            "tolerations": [{"key": "agents", "operator": "Exists"}],
        });
        assert_eq!(check_pod_template(&ok), Ok(()));
        let typo = serde_json::json!({"nodeSelecter": {"pool": "agents"}});
        let e = check_pod_template(&typo).unwrap_err();
        assert!(e.contains("nodeSelecter"), "{e}");
        let nested = serde_json::json!({"tolerations": [{"key": "a", "operater": "Exists"}]});
        let e = check_pod_template(&nested).unwrap_err();
        assert!(e.contains("tolerations[0].operater"), "{e}");
        let wrong_type = serde_json::json!({"nodeSelector": ["a"]});
        assert!(
            check_pod_template(&wrong_type)
                .unwrap_err()
                .contains("not a valid PodSpec")
        );
        assert!(check_pod_template(&serde_json::json!("x")).is_err());
    }
}
