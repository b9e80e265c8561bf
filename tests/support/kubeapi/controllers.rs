//! The control plane's loops, run together after every change and every 50 ms: finalization
//! of deleted objects, the garbage collector, the Job controller, the TTL-after-finished
//! controller, the scheduler, and the kubelet's sync (starting pods, pod deadlines).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::events::Recorder;
use super::kubelet::{set_condition, start_pod};
use super::objects::{self, DeleteOptions, JOB_TRACKING};
use super::resources::{Kind, info};
use super::state::{Shared, State, now_rfc3339, parse_ts};
use super::store::meta;
use super::validate::quantity;

/// Runs the loops until the fake is dropped.
pub fn spawn(shared: &Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let changed = {
                let mut st = shared.state.lock();
                let before = st.store.rv();
                reconcile(&shared, &mut st);
                st.store.rv() != before
            };
            if changed {
                shared.changed.notify_waiters();
                continue;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
}

fn reconcile(shared: &Arc<Shared>, st: &mut State) {
    finalize(st);
    garbage_collect(st);
    for job in st.store.list(Kind::Job, None) {
        job_controller(st, job);
    }
    ttl_after_finished(st);
    schedule(st);
    kubelet_sync(shared, st);
}

fn deleting(o: &Value) -> bool {
    !o["metadata"]["deletionTimestamp"].is_null()
}

fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

fn without_finalizer(o: &mut Value, f: &str) {
    let left: Vec<String> = finalizers(o).into_iter().filter(|x| x != f).collect();
    if left.is_empty() {
        if let Some(m) = o["metadata"].as_object_mut() {
            m.remove("finalizers");
        }
    } else {
        o["metadata"]["finalizers"] = json!(left);
    }
}

fn terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// The kubelet has nothing running for this pod (or never ran it).
fn kubelet_done(st: &State, pod: &Value) -> bool {
    st.runtimes.get(meta(pod, "uid")).is_none_or(|r| r.done)
}

/// Removes deleted objects whose finalizers are done (pods: once the kubelet stopped them).
fn finalize(st: &mut State) {
    for kind in [Kind::Pod, Kind::Job, Kind::NetworkPolicy, Kind::Service] {
        for o in st.store.list(kind, None) {
            if deleting(&o)
                && finalizers(&o).is_empty()
                && (kind != Kind::Pod || kubelet_done(st, &o))
            {
                st.store
                    .remove(kind, meta(&o, "namespace"), meta(&o, "name"));
                st.runtimes.remove(meta(&o, "uid"));
            }
        }
    }
}

fn owned_by(pod: &Value, uid: &str) -> bool {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["uid"] == uid)
}

fn delete_pod(st: &mut State, pod: &Value) {
    let _ = objects::delete(
        st,
        info(Kind::Pod),
        meta(pod, "namespace"),
        meta(pod, "name"),
        &DeleteOptions::default(),
    );
}

/// Foreground, orphan and background propagation of Job deletions to their pods.
fn garbage_collect(st: &mut State) {
    let pods = st.store.list(Kind::Pod, None);
    for job in st.store.list(Kind::Job, None) {
        if !deleting(&job) {
            continue;
        }
        let uid = meta(&job, "uid").to_string();
        let fins = finalizers(&job);
        let dependents: Vec<&Value> = pods.iter().filter(|p| owned_by(p, &uid)).collect();
        if fins.iter().any(|f| f == "orphan") {
            for p in &dependents {
                let mut p = (*p).clone();
                if let Some(refs) = p["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"] != uid.as_str());
                }
                st.store.put(Kind::Pod, p);
            }
            let mut j = job.clone();
            without_finalizer(&mut j, "orphan");
            st.store.put(Kind::Job, j);
        } else if fins.iter().any(|f| f == "foregroundDeletion") {
            for p in &dependents {
                if !deleting(p) {
                    delete_pod(st, p);
                }
            }
            let blocking = dependents.iter().any(|p| {
                st.store
                    .get(Kind::Pod, meta(p, "namespace"), meta(p, "name"))
                    .is_some()
            });
            if !blocking {
                let mut j = job.clone();
                without_finalizer(&mut j, "foregroundDeletion");
                st.store.put(Kind::Job, j);
            }
        }
    }
    // Pods counted by no Job any more (orphaned, or their Job is gone): the Job controller
    // still lets them go once they are over.
    for p in st.store.list(Kind::Pod, None) {
        let tracked = finalizers(&p).iter().any(|f| f == JOB_TRACKING);
        let owner_alive = p["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| {
                r["controller"] == true
                    && st
                        .store
                        .find_uid(Kind::Job, r["uid"].as_str().unwrap_or_default())
                        .is_some()
            });
        if tracked && !owner_alive && (terminal(&p) || (deleting(&p) && kubelet_done(st, &p))) {
            let mut p = p.clone();
            without_finalizer(&mut p, JOB_TRACKING);
            st.store.put(Kind::Pod, p);
        }
    }
    // Background: dependents of owners that no longer exist.
    for p in st.store.list(Kind::Pod, None) {
        let refs = p["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let orphaned = refs.iter().any(|r| {
            r["kind"] == "Job"
                && st
                    .store
                    .find_uid(Kind::Job, r["uid"].as_str().unwrap_or_default())
                    .is_none()
        });
        if orphaned && !deleting(&p) {
            delete_pod(st, &p);
        }
    }
}

fn condition<'a>(o: &'a Value, ctype: &str) -> Option<&'a Value> {
    o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == ctype)
}

fn is_true(o: &Value, ctype: &str) -> bool {
    condition(o, ctype).is_some_and(|c| c["status"] == "True")
}

fn set_job_condition(job: &mut Value, ctype: &str, status: &str, reason: &str, message: &str) {
    let now = now_rfc3339();
    if !job["status"]["conditions"].is_array() {
        job["status"]["conditions"] = json!([]);
    }
    let c = json!({"type": ctype, "status": status, "reason": reason, "message": message,
                   "lastProbeTime": now, "lastTransitionTime": now});
    if let Some(list) = job["status"]["conditions"].as_array_mut() {
        match list.iter_mut().find(|x| x["type"] == ctype) {
            Some(old) if old["status"] == status => {}
            Some(old) => *old = c,
            None => list.push(c),
        }
    }
}

fn secs_since(ts: &Value) -> Option<f64> {
    let t = parse_ts(ts.as_str()?)?;
    let now = chrono::Utc::now().timestamp_nanos_opt()?;
    Some((now - t) as f64 / 1e9)
}

/// The Job controller, for NonIndexed Jobs with one completion.
fn job_controller(st: &mut State, job: Value) {
    let uid = meta(&job, "uid").to_string();
    let ns = meta(&job, "namespace").to_string();
    let name = meta(&job, "name").to_string();
    let mut j = job.clone();
    let mut events: Vec<(&str, &str, String)> = Vec::new();
    let owned: Vec<Value> = st
        .store
        .list(Kind::Pod, Some(&ns))
        .into_iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["uid"] == uid.as_str() && r["controller"] == true)
        })
        .collect();
    // Count finished pods once, then let them go.
    let mut succeeded = j["status"]["succeeded"].as_i64().unwrap_or(0);
    let mut failed = j["status"]["failed"].as_i64().unwrap_or(0);
    for p in &owned {
        let tracked = finalizers(p).iter().any(|f| f == JOB_TRACKING);
        let over = terminal(p) || (deleting(p) && kubelet_done(st, p));
        if tracked && over {
            if p["status"]["phase"] == "Succeeded" {
                succeeded += 1;
            } else {
                failed += 1;
            }
            let mut p = p.clone();
            without_finalizer(&mut p, JOB_TRACKING);
            st.store.put(Kind::Pod, p);
        }
    }
    let active: Vec<&Value> = owned
        .iter()
        .filter(|p| !terminal(p) && !deleting(p))
        .collect();
    let terminating = owned.iter().filter(|p| deleting(p) && !terminal(p)).count();
    let ready = active
        .iter()
        .filter(|p| condition(p, "Ready").is_some_and(|c| c["status"] == "True"))
        .count();
    let finished = is_true(&j, "Complete") || is_true(&j, "Failed");
    let spec = j["spec"].clone();
    let suspended = spec["suspend"] == true;
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
    let mut to_delete: Vec<Value> = Vec::new();
    let mut create = false;
    if !finished {
        if suspended {
            if !is_true(&j, "Suspended") {
                set_job_condition(&mut j, "Suspended", "True", "JobSuspended", "Job suspended");
                events.push(("Normal", "Suspended", "Job suspended".into()));
            }
            to_delete.extend(active.iter().map(|p| (*p).clone()));
        } else {
            if is_true(&j, "Suspended") {
                set_job_condition(&mut j, "Suspended", "False", "JobResumed", "Job resumed");
                events.push(("Normal", "Resumed", "Job resumed".into()));
                j["status"]["startTime"] = json!(now_rfc3339());
            }
            if j["status"]["startTime"].is_null() {
                j["status"]["startTime"] = json!(now_rfc3339());
            }
            if !is_true(&j, "FailureTarget") && !is_true(&j, "SuccessCriteriaMet") {
                let deadline = spec["activeDeadlineSeconds"].as_i64();
                let elapsed = secs_since(&j["status"]["startTime"]).unwrap_or(0.0);
                let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
                if deadline.is_some_and(|d| elapsed >= d as f64) {
                    let m = "Job was active longer than specified deadline";
                    set_job_condition(&mut j, "FailureTarget", "True", "DeadlineExceeded", m);
                    events.push(("Warning", "DeadlineExceeded", m.into()));
                } else if failed > backoff_limit {
                    let m = "Job has reached the specified backoff limit";
                    set_job_condition(&mut j, "FailureTarget", "True", "BackoffLimitExceeded", m);
                    events.push(("Warning", "BackoffLimitExceeded", m.into()));
                } else if succeeded >= spec["completions"].as_i64().unwrap_or(1) {
                    let m = "Reached expected number of succeeded pods";
                    set_job_condition(
                        &mut j,
                        "SuccessCriteriaMet",
                        "True",
                        "CompletionsReached",
                        m,
                    );
                } else if active.is_empty() && terminating == 0 && parallelism > 0 && !deleting(&j)
                {
                    create = true;
                }
            }
            if parallelism == 0 {
                to_delete.extend(active.iter().map(|p| (*p).clone()));
            }
            if let Some(c) = condition(&j, "FailureTarget")
                .filter(|c| c["status"] == "True")
                .cloned()
            {
                to_delete.extend(active.iter().map(|p| (*p).clone()));
                if active.is_empty() && terminating == 0 {
                    let reason = c["reason"].as_str().unwrap_or_default().to_string();
                    let message = c["message"].as_str().unwrap_or_default().to_string();
                    set_job_condition(&mut j, "Failed", "True", &reason, &message);
                }
            }
            if is_true(&j, "SuccessCriteriaMet") && active.is_empty() && terminating == 0 {
                let m = "Reached expected number of succeeded pods";
                set_job_condition(&mut j, "Complete", "True", "CompletionsReached", m);
                j["status"]["completionTime"] = json!(now_rfc3339());
                events.push(("Normal", "Completed", "Job completed".into()));
            }
        }
    }
    let created = if create { create_pod(st, &j) } else { None };
    let deleted: Vec<String> = to_delete
        .iter()
        .map(|p| {
            delete_pod(st, p);
            meta(p, "name").to_string()
        })
        .collect();
    let active_n = active.len() as i64 - deleted.len() as i64 + i64::from(created.is_some());
    let status = &mut j["status"];
    for (k, v) in [
        ("active", active_n),
        ("succeeded", succeeded),
        ("failed", failed),
    ] {
        if v > 0 {
            status[k] = json!(v);
        } else if let Some(o) = status.as_object_mut() {
            o.remove(k);
        }
    }
    status["ready"] = json!(ready);
    status["terminating"] = json!(terminating + deleted.len());
    status["uncountedTerminatedPods"] = json!({});
    let stored = if st.store.get(Kind::Job, &ns, &name).is_some() {
        st.store.put(Kind::Job, j)
    } else {
        return;
    };
    if let Some(p) = created {
        events.push(("Normal", "SuccessfulCreate", format!("Created pod: {p}")));
    }
    for p in deleted {
        events.push(("Normal", "SuccessfulDelete", format!("Deleted pod: {p}")));
    }
    for (t, r, m) in events {
        st.event(Recorder::JobController, &stored, None, t, r, &m);
    }
}

/// Creates a Job's pod; its name, or None when admission refused it (FailedCreate).
fn create_pod(st: &mut State, job: &Value) -> Option<String> {
    let uid = meta(job, "uid").to_string();
    let now = tokio::time::Instant::now();
    if let Some((at, _)) = st.create_backoff.get(&uid)
        && now < *at
    {
        return None;
    }
    let name = meta(job, "name").to_string();
    let tpl = &job["spec"]["template"];
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{name}-{}", objects::random_suffix()),
            "generateName": format!("{name}-"),
            "labels": tpl["metadata"]["labels"],
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
            "finalizers": [JOB_TRACKING],
        },
        "spec": tpl["spec"],
    });
    if let Some(a) = tpl["metadata"].get("annotations") {
        pod["metadata"]["annotations"] = a.clone();
    }
    let ns = meta(job, "namespace").to_string();
    match objects::prepare_create(st, info(Kind::Pod), &ns, pod) {
        Ok(p) => {
            let pname = meta(&p, "name").to_string();
            st.store.create(Kind::Pod, p);
            st.create_backoff.remove(&uid);
            Some(pname)
        }
        Err(e) => {
            let tries = st.create_backoff.get(&uid).map_or(0, |(_, n)| *n);
            let wait = Duration::from_millis(100 * 2u64.pow(tries.min(4)));
            st.create_backoff.insert(uid, (now + wait, tries + 1));
            st.event(
                Recorder::JobController,
                job,
                None,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {}", e.message),
            );
            None
        }
    }
}

/// Deletes finished Jobs once their TTL has passed (background propagation).
fn ttl_after_finished(st: &mut State) {
    for job in st.store.list(Kind::Job, None) {
        let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
            continue;
        };
        if deleting(&job) {
            continue;
        }
        let finished_at = condition(&job, "Complete")
            .or_else(|| condition(&job, "Failed"))
            .filter(|c| c["status"] == "True")
            .map(|c| c["lastTransitionTime"].clone());
        if finished_at
            .and_then(|t| secs_since(&t))
            .is_some_and(|s| s >= ttl as f64)
        {
            expire_job(st, &job);
        }
    }
}

/// What the TTL controller does to a finished Job: delete it, background propagation.
pub fn expire_job(st: &mut State, job: &Value) {
    let _ = objects::delete(
        st,
        info(Kind::Job),
        meta(job, "namespace"),
        meta(job, "name"),
        &DeleteOptions {
            propagation: Some("Background".into()),
            ..DeleteOptions::default()
        },
    );
}

/// A pod's requests (cores, bytes): the larger of the init containers' and the containers'
/// sum, requests defaulting to limits.
fn requests(pod: &Value) -> (f64, f64) {
    let one = |c: &Value, r: &str| {
        quantity(&c["resources"]["requests"][r])
            .or_else(|| quantity(&c["resources"]["limits"][r]))
            .unwrap_or(0.0)
    };
    let sum = |list: &str, r: &str| -> f64 {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| one(c, r))
            .sum()
    };
    let max_init = |r: &str| -> f64 {
        pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| one(c, r))
            .fold(0.0, f64::max)
    };
    (
        sum("containers", "cpu").max(max_init("cpu")),
        sum("containers", "memory").max(max_init("memory")),
    )
}

/// The scheduler: binds pending pods to the node, or says why it cannot.
fn schedule(st: &mut State) {
    let node = st.node_name.clone();
    let bound: Vec<Value> = st
        .store
        .list(Kind::Pod, None)
        .into_iter()
        .filter(|p| p["spec"]["nodeName"] == node.as_str() && !terminal(p))
        .collect();
    let (used_cpu, used_mem) = bound
        .iter()
        .map(requests)
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    for pod in st.store.list(Kind::Pod, None) {
        if !pod["spec"]["nodeName"].is_null() || deleting(&pod) || terminal(&pod) {
            continue;
        }
        let mut selector = pod["spec"]["nodeSelector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Some(rc) = pod["spec"]["runtimeClassName"].as_str()
            && let Some(class) = st.store.get(Kind::RuntimeClass, "", rc)
            && let Some(extra) = class["scheduling"]["nodeSelector"].as_object()
        {
            selector.extend(extra.clone());
        }
        let labels_ok = selector
            .iter()
            .all(|(k, v)| st.kubelet.node_labels.get(k) == Some(v));
        let (cpu, mem) = requests(&pod);
        let mut short = Vec::new();
        if cpu > st.kubelet.cpu - used_cpu + 1e-9 {
            short.push("1 Insufficient cpu");
        }
        if mem > st.kubelet.memory - used_mem + 0.5 {
            short.push("1 Insufficient memory");
        }
        let why = if !labels_ok {
            Some("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.".to_string())
        } else if !short.is_empty() {
            Some(format!(
                "0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
                short.join(", ")
            ))
        } else {
            None
        };
        let mut p = pod.clone();
        match why {
            Some(m) => {
                let same = condition(&pod, "PodScheduled")
                    .is_some_and(|c| c["status"] == "False" && c["message"] == m.as_str());
                if !same {
                    set_condition(
                        &mut p,
                        "PodScheduled",
                        "False",
                        Some("Unschedulable"),
                        Some(&m),
                    );
                    let stored = st.store.put(Kind::Pod, p);
                    st.event(
                        Recorder::Scheduler,
                        &stored,
                        None,
                        "Warning",
                        "FailedScheduling",
                        &m,
                    );
                }
            }
            None => {
                p["spec"]["nodeName"] = json!(node);
                set_condition(&mut p, "PodScheduled", "True", None, None);
                let stored = st.store.put(Kind::Pod, p);
                let m = format!(
                    "Successfully assigned {}/{} to {node}",
                    meta(&stored, "namespace"),
                    meta(&stored, "name")
                );
                st.event(
                    Recorder::Scheduler,
                    &stored,
                    None,
                    "Normal",
                    "Scheduled",
                    &m,
                );
            }
        }
    }
}

/// The kubelet's sync: start pods bound here, enforce pods' activeDeadlineSeconds.
fn kubelet_sync(shared: &Arc<Shared>, st: &mut State) {
    let node = st.node_name.clone();
    for pod in st.store.list(Kind::Pod, None) {
        if pod["spec"]["nodeName"] != node.as_str() {
            continue;
        }
        let uid = meta(&pod, "uid").to_string();
        if !st.runtimes.contains_key(&uid) {
            if !terminal(&pod) && !deleting(&pod) {
                start_pod(shared, st, &pod);
            }
            continue;
        }
        if terminal(&pod) || st.runtimes.get(&uid).is_some_and(|r| r.done) {
            continue;
        }
        let Some(deadline) = pod["spec"]["activeDeadlineSeconds"].as_i64() else {
            continue;
        };
        if secs_since(&pod["status"]["startTime"]).is_some_and(|s| s >= deadline as f64) {
            let m = "Pod was active on the node longer than the specified deadline";
            let mut p = pod.clone();
            p["status"]["phase"] = json!("Failed");
            p["status"]["reason"] = json!("DeadlineExceeded");
            p["status"]["message"] = json!(m);
            let stored = st.store.put(Kind::Pod, p);
            st.event(
                Recorder::Kubelet,
                &stored,
                None,
                "Normal",
                "DeadlineExceeded",
                m,
            );
            let grace = pod["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            st.kill_pod(&stored, grace);
        }
    }
}
