//! What a Job is called and labelled: a deterministic name per execution, Oz's labels (raw ids
//! sanitised, and their hashes, which every selector uses because sanitising is lossy), the
//! owner label that keeps several berths with one worker id apart, and the raw ids as
//! annotations (what reattach reads back).

use std::collections::BTreeMap;

use crate::spec::owner::LABEL_INSTANCE;
use crate::spec::{LABEL_EXECUTION, LABEL_MANAGED, LABEL_TASK, LABEL_WORKER};

/// Oz's label keys (the sanitised id, and its hash).
pub const OZ_WORKER_ID: &str = "oz-worker-id";
pub const OZ_WORKER_HASH: &str = "oz-worker-hash";
pub const OZ_TASK_ID: &str = "oz-task-id";
pub const OZ_TASK_HASH: &str = "oz-task-hash";
pub const OZ_EXECUTION_ID: &str = "oz-execution-id";
pub const OZ_EXECUTION_HASH: &str = "oz-execution-hash";

/// Annotations holding the raw ids (labels cannot hold every id).
pub const ANNOTATION_WORKER: &str = "berth.dev/worker-id";
pub const ANNOTATION_TASK: &str = "berth.dev/task-id";
pub const ANNOTATION_EXECUTION: &str = "berth.dev/execution-id";

/// The task's container; init containers are `step-<n>` and `sidecar-<n>`.
pub const TASK_CONTAINER: &str = "task";

/// First 8 bytes of SHA-256, in hex (Oz's label hash).
pub fn hash(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A label value for `s` as Oz writes it: lowercase, `[a-z0-9-_.]` kept, anything else '-',
/// trimmed of `-_.` at both ends, at most 63 characters; `unknown` when nothing is left.
pub fn sanitise(s: &str) -> String {
    let trim = |s: &str| s.trim_matches(|c| matches!(c, '-' | '_' | '.')).to_string();
    let mapped: String = s
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .collect();
    let mut out = trim(&mapped);
    out.truncate(63);
    let out = trim(&out);
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

/// The Job of an execution: `berth-<task id, sanitised, ≤ 40>-<hash of the execution id, 12>`
/// — readable, deterministic (a retried create finds the first), unique per execution, and
/// short enough for the `job-name` label (≤ 63).
pub fn job_name(task_id: &str, execution_id: &str) -> String {
    let mut task: String = sanitise(task_id)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    task.truncate(40);
    let task = task.trim_matches('-');
    let h = &hash(execution_id)[..12];
    if task.is_empty() || task == "unknown" {
        format!("berth-{h}")
    } else {
        format!("berth-{task}-{h}")
    }
}

/// The ids a Job is labelled and annotated with, read off the spec's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Ids {
    pub worker_id: String,
    pub task_id: String,
    pub execution_id: String,
    /// The owner (berth instance).
    pub instance: String,
}

impl Ids {
    /// From berth's labels on a sandbox spec.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Ids {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Ids {
            worker_id: get(LABEL_WORKER),
            task_id: get(LABEL_TASK),
            execution_id: get(LABEL_EXECUTION),
            instance: get(LABEL_INSTANCE),
        }
    }

    /// From a Job's annotations and labels (what berth wrote at create).
    pub fn from_object(
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Ids {
        let a = |k: &str| annotations.get(k).cloned().unwrap_or_default();
        Ids {
            worker_id: a(ANNOTATION_WORKER),
            task_id: a(ANNOTATION_TASK),
            execution_id: a(ANNOTATION_EXECUTION),
            instance: labels.get(LABEL_INSTANCE).cloned().unwrap_or_default(),
        }
    }

    /// Labels: Oz's six, berth's managed and owner labels (the owner is a valid label value:
    /// the config and the instance id file make sure).
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (OZ_WORKER_ID.into(), sanitise(&self.worker_id)),
            (OZ_WORKER_HASH.into(), hash(&self.worker_id)),
            (OZ_TASK_ID.into(), sanitise(&self.task_id)),
            (OZ_TASK_HASH.into(), hash(&self.task_id)),
            (OZ_EXECUTION_ID.into(), sanitise(&self.execution_id)),
            (OZ_EXECUTION_HASH.into(), hash(&self.execution_id)),
            (LABEL_MANAGED.into(), "true".into()),
            (LABEL_INSTANCE.into(), self.instance.clone()),
        ])
    }

    /// Annotations: the raw ids.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ANNOTATION_WORKER.into(), self.worker_id.clone()),
            (ANNOTATION_TASK.into(), self.task_id.clone()),
            (ANNOTATION_EXECUTION.into(), self.execution_id.clone()),
        ])
    }
}

/// Selects this worker id's Jobs (every instance's).
pub fn worker_selector(worker_id: &str) -> String {
    format!("{LABEL_MANAGED}=true,{OZ_WORKER_HASH}={}", hash(worker_id))
}

/// Selects the Jobs and pods of one execution (any owner's).
pub fn execution_selector(worker_id: &str, execution_id: &str) -> String {
    format!(
        "{},{OZ_EXECUTION_HASH}={}",
        worker_selector(worker_id),
        hash(execution_id)
    )
}

/// A sandbox id as berth journals it: the Job's name and UID (deletes and patches are fenced
/// by the UID, so a Job made again under the same name is never mistaken for ours).
pub fn sandbox_id(name: &str, uid: &str) -> String {
    format!("{name}/{uid}")
}

/// The name and UID of a sandbox id (a bare name has no UID: from an older journal entry).
pub fn parse_sandbox_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once('/') {
        Some((name, uid)) if !uid.is_empty() => (name, Some(uid)),
        _ => (id.trim_end_matches('/'), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{valid_dns_label, valid_label_value};

    #[test]
    fn hashes_are_the_first_eight_bytes_of_sha256_in_hex() {
        // sha256("abc") = ba7816bf8f01cfea…
        assert_eq!(hash("abc"), "ba7816bf8f01cfea");
        assert_eq!(hash("").len(), 16);
    }

    #[test]
    fn sanitising_follows_oz() {
        assert_eq!(sanitise("Task_ID/42"), "task_id-42");
        assert_eq!(sanitise("--a.b__"), "a.b");
        assert_eq!(sanitise("é"), "unknown");
        assert_eq!(sanitise(""), "unknown");
        let long = format!("{}-x", "a".repeat(62));
        assert_eq!(sanitise(&long), "a".repeat(62), "cut at 63, then trimmed");
        for s in ["Task_ID/42", "--a.b__", &long, "x y z", "ÅÄÖ-1"] {
            assert!(valid_label_value(&sanitise(s)), "{s}");
        }
    }

    #[test]
    fn job_names_are_deterministic_distinct_and_valid() {
        let a = job_name("0b7c2e5e-task", "exec-1");
        assert_eq!(a, job_name("0b7c2e5e-task", "exec-1"));
        assert_ne!(a, job_name("0b7c2e5e-task", "exec-2"));
        assert!(a.starts_with("berth-0b7c2e5e-task-"), "{a}");
        for (t, e) in [
            ("T", "e"),
            ("", "e"),
            ("___", "e"),
            (&"x".repeat(300), "e"),
            ("a.b_c", "e"),
            (
                "550e8400-e29b-41d4-a716-446655440000",
                "0b7c2e5e-aaaa-bbbb-cccc-dddddddddddd",
            ),
        ] {
            let n = job_name(t, e);
            assert!(valid_dns_label(&n) && n.len() <= 63, "{n:?} from {t:?}");
        }
        assert_eq!(job_name("", "e"), format!("berth-{}", &hash("e")[..12]));
    }

    #[test]
    fn labels_hold_sanitised_ids_and_hashes_and_annotations_the_raw_ids() {
        let ids = Ids {
            worker_id: "Host 1".into(),
            task_id: "T/1".into(),
            execution_id: "E:1".into(),
            instance: "berth-0".into(),
        };
        let l = ids.labels();
        assert_eq!(l[OZ_WORKER_ID], "host-1");
        assert_eq!(l[OZ_WORKER_HASH], hash("Host 1"));
        assert_eq!(l[OZ_EXECUTION_HASH], hash("E:1"));
        assert_eq!(l[LABEL_INSTANCE], "berth-0");
        assert!(l.values().all(|v| valid_label_value(v)));
        let back = Ids::from_object(&l, &ids.annotations());
        assert_eq!(back, ids, "the raw ids come back from the annotations");
        assert_eq!(
            execution_selector("Host 1", "E:1"),
            format!(
                "berth.managed=true,oz-worker-hash={},oz-execution-hash={}",
                hash("Host 1"),
                hash("E:1")
            )
        );
    }

    #[test]
    fn sandbox_ids_carry_name_and_uid() {
        let id = sandbox_id("berth-x", "5d1e-aa");
        assert_eq!(parse_sandbox_id(&id), ("berth-x", Some("5d1e-aa")));
        assert_eq!(parse_sandbox_id("berth-x"), ("berth-x", None));
        assert_eq!(parse_sandbox_id("berth-x/"), ("berth-x", None));
    }
}
