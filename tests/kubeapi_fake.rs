//! Self-tests of the fake Kubernetes apiserver (`tests/support/kubeapi`), through raw HTTPS as
//! any client would speak to it: Jobs and their pods, pods/log's quirks, watches, deletion,
//! deadlines, admission, scheduling, image pulls, faults and outages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use berth::backend::fake::Script;
use berth::protocol::Stream;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::kubeapi::{FakeApiserver, Fault, FollowEnd, format_ts};

const NS: &str = "berth";
const JOBS: &str = "/apis/batch/v1/namespaces/berth/jobs";
const PODS: &str = "/api/v1/namespaces/berth/pods";

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(fake: &FakeApiserver) -> Client {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(fake.client_tls())
            .http1_only()
            .build()
            .unwrap();
        Client {
            http,
            base: fake.url(),
            token: fake.token(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn send(&self, b: reqwest::RequestBuilder) -> (u16, Value) {
        let r = b.send().await.unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    async fn text(&self, path: &str) -> (u16, String) {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(
            self.request(reqwest::Method::PATCH, path)
                .header("content-type", "application/merge-patch+json")
                .body(body.to_string()),
        )
        .await
    }

    async fn delete(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.request(reqwest::Method::DELETE, path).json(&body))
            .await
    }

    /// A streaming GET: its chunks, as text, until it ends or `within` passes.
    async fn stream(&self, path: &str, within: Duration) -> (String, bool) {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let mut s = r.bytes_stream();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.next()).await {
                Ok(Some(Ok(b))) => out.extend_from_slice(&b),
                Ok(Some(Err(_))) | Ok(None) => return (String::from_utf8_lossy(&out).into(), true),
                Err(_) => return (String::from_utf8_lossy(&out).into(), false),
            }
        }
    }
}

/// A Job running `sh -c SCRIPT` in container `task` of image `busybox:1.36`.
fn job(name: &str, script: &str, suspend: bool) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"berth.execution": name}},
        "spec": {
            "suspend": suspend, "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"berth.execution": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "task", "image": "busybox:1.36",
                                    "command": ["sh", "-c", script]}],
                },
            },
        },
    })
}

fn status_of(v: &Value) -> (&str, &str, i64) {
    (
        v["kind"].as_str().unwrap_or_default(),
        v["reason"].as_str().unwrap_or_default(),
        v["code"].as_i64().unwrap_or_default(),
    )
}

fn pod_of(fake: &FakeApiserver, job: &str) -> Option<Value> {
    fake.pods()
        .into_iter()
        .find(|p| p["metadata"]["labels"]["job-name"] == job)
}

fn name(v: &Value) -> String {
    v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn phase(fake: &FakeApiserver, job: &str) -> Option<String> {
    pod_of(fake, job).and_then(|p| p["status"]["phase"].as_str().map(str::to_string))
}

async fn pod_in_phase(fake: &FakeApiserver, job: &str, want: &str) -> Value {
    fake.wait_for(Duration::from_secs(5), |f| {
        pod_of(f, job).filter(|p| p["status"]["phase"] == want)
    })
    .await
    .unwrap_or_else(|| panic!("pod of {job} never {want}: {:?}", pod_of(fake, job)))
}

fn condition<'a>(o: &'a Value, t: &str) -> Option<&'a Value> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

#[tokio::test]
async fn requests_need_the_token_and_errors_are_status_objects() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    let anon = c
        .http
        .get(format!("{}/version", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let body: Value = anon.json().await.unwrap();
    assert_eq!(status_of(&body), ("Status", "Unauthorized", 401));

    let (code, v) = c.get("/version").await;
    assert_eq!(
        (code, v["gitVersion"].as_str()),
        (200, Some("v1.33.0-fake"))
    );

    let (code, v) = c.get(&format!("{JOBS}/nope")).await;
    assert_eq!(code, 404);
    assert_eq!(v["message"], "jobs.batch \"nope\" not found");
    assert_eq!(
        v["details"],
        json!({"name": "nope", "group": "batch", "kind": "jobs"})
    );

    let (code, v) = c.post(JOBS, job("Bad_Name", "true", true)).await;
    assert_eq!(status_of(&v), ("Status", "Invalid", 422), "{v}");
    assert_eq!(code, 422);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Job.batch \"Bad_Name\" is invalid: metadata.name: Invalid value")
    );

    let mut long_label = job("labelled", "true", true);
    long_label["metadata"]["labels"]["x"] = json!("v".repeat(64));
    let (code, v) = c.post(JOBS, long_label).await;
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("must be no more than 63 characters")
    );

    let (code, _) = c.post(JOBS, job("twice", "true", true)).await;
    assert_eq!(code, 201);
    let (code, v) = c.post(JOBS, job("twice", "true", true)).await;
    assert_eq!(
        (code, status_of(&v)),
        (409, ("Status", "AlreadyExists", 409))
    );
    assert_eq!(v["message"], "jobs.batch \"twice\" already exists");

    let (code, v) = c.get(&format!("{JOBS}?labelSelector=a+in+(")).await;
    assert_eq!((code, v["reason"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn a_suspended_job_has_no_pod_until_resumed_then_its_merged_logs_are_served() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    let (code, created) = c
        .post(JOBS, job("run1", "echo out; echo err >&2; echo more", true))
        .await;
    assert_eq!(code, 201, "{created}");
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(
        created["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/controller-uid"],
        uid.as_str()
    );
    let suspended = fake
        .wait_for(Duration::from_secs(2), |f| {
            f.object("jobs", NS, "run1")
                .filter(|j| condition(j, "Suspended").is_some_and(|c| c["status"] == "True"))
        })
        .await;
    assert!(suspended.is_some());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(fake.pods().is_empty(), "a suspended Job has no pod");

    let (code, _) = c
        .patch(&format!("{JOBS}/run1"), json!({"spec": {"suspend": false}}))
        .await;
    assert_eq!(code, 200);
    let pod = pod_in_phase(&fake, "run1", "Succeeded").await;
    let pname = name(&pod);
    assert!(pname.starts_with("run1-") && pname.len() == "run1-".len() + 5);
    let labels = &pod["metadata"]["labels"];
    for k in ["job-name", "batch.kubernetes.io/job-name"] {
        assert_eq!(labels[k], "run1");
    }
    for k in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
        assert_eq!(labels[k], uid.as_str());
    }
    assert_eq!(labels["berth.execution"], "run1");
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["uid"].as_str()),
        (Some("Job"), Some(uid.as_str()))
    );
    assert_eq!(
        (
            owner["controller"].as_bool(),
            owner["blockOwnerDeletion"].as_bool()
        ),
        (Some(true), Some(true))
    );
    let term = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (term["exitCode"].as_i64(), term["reason"].as_str()),
        (Some(0), Some("Completed"))
    );

    let (code, text) = c.text(&format!("{PODS}/{pname}/log")).await;
    assert_eq!(
        (code, text.as_str()),
        (200, "out\nerr\nmore\n"),
        "merged, no marker"
    );

    let done = fake
        .wait_for(Duration::from_secs(3), |f| {
            f.object("jobs", NS, "run1")
                .filter(|j| condition(j, "Complete").is_some_and(|c| c["status"] == "True"))
        })
        .await
        .expect("the Job completes");
    let types: Vec<&str> = done["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    let pos = |t: &str| types.iter().position(|x| *x == t).unwrap();
    assert!(pos("SuccessCriteriaMet") < pos("Complete"), "{types:?}");
    assert_eq!(done["status"]["succeeded"], 1);
    assert!(
        done["status"]["startTime"].is_string() && done["status"]["completionTime"].is_string()
    );

    let (_, evs) = c
        .get(&format!(
            "/api/v1/namespaces/berth/events?fieldSelector=involvedObject.uid={uid}"
        ))
        .await;
    let reasons: Vec<&str> = evs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    for r in ["Suspended", "Resumed", "SuccessfulCreate", "Completed"] {
        assert!(reasons.contains(&r), "{reasons:?}");
    }
    let (_, evs) = c
        .get(&format!("/api/v1/namespaces/berth/events?fieldSelector=involvedObject.name={pname},involvedObject.kind=Pod"))
        .await;
    let reasons: Vec<&str> = evs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["Scheduled", "Pulled", "Created", "Started"]);
    let scheduled = &evs["items"][0];
    assert!(scheduled["eventTime"].is_string() && scheduled["lastTimestamp"].is_null());
    let started = &evs["items"][3];
    assert_eq!(
        started["involvedObject"]["fieldPath"],
        "spec.containers{task}"
    );
    assert_eq!(
        (
            started["count"].as_i64(),
            started["source"]["component"].as_str()
        ),
        (Some(1), Some("kubelet"))
    );

    // Lists filter by label and field, and page.
    let (_, l) = c
        .get(&format!(
            "{PODS}?labelSelector=job-name%3Drun1,berth.execution"
        ))
        .await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    assert!(
        l["items"][0].get("kind").is_none(),
        "list items carry no kind"
    );
    let (_, l) = c
        .get(&format!("{PODS}?fieldSelector=status.phase!%3DSucceeded"))
        .await;
    assert!(l["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn long_lines_are_pieces_each_with_its_own_timestamp() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    fake.kubelet().piece_size(10);
    let line = "abcdefghij".repeat(2) + "xyz";
    c.post(
        JOBS,
        job("long", &format!("echo {line}; echo short"), false),
    )
    .await;
    let pod = pod_in_phase(&fake, "long", "Succeeded").await;
    let (_, plain) = c.text(&format!("{PODS}/{}/log", name(&pod))).await;
    assert_eq!(
        plain,
        format!("{line}\nshort\n"),
        "pieces join without timestamps"
    );
    let (_, stamped) = c
        .text(&format!("{PODS}/{}/log?timestamps=true", name(&pod)))
        .await;
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    // TS abcdefghijTS abcdefghijTS xyz
    let pieces: Vec<&str> = lines[0].split('Z').collect();
    let ts_len = "2026-12-06T20:01:02.123456789".len();
    assert_eq!(pieces.len(), 4, "{}", lines[0]);
    assert_eq!(pieces[0].len(), ts_len, "nine digits, fixed");
    assert_eq!(&pieces[1][..11], " abcdefghij");
    assert_eq!(&pieces[2][..11], " abcdefghij");
    assert_eq!(pieces[3], " xyz");
    let (_, tailed) = c
        .text(&format!("{PODS}/{}/log?tailLines=2", name(&pod)))
        .await;
    assert_eq!(tailed, "xyz\nshort\n", "tailLines counts pieces");
}

#[tokio::test]
async fn timestamps_are_fixed_width_unless_the_node_trims_them() {
    assert_eq!(
        format_ts(1_796_587_262_123_400_000, false),
        "2026-12-06T20:01:02.123400000Z"
    );
    assert_eq!(
        format_ts(1_796_587_262_123_400_000, true),
        "2026-12-06T20:01:02.1234Z"
    );
    assert_eq!(
        format_ts(1_796_587_262_000_000_000, true),
        "2026-12-06T20:01:02Z"
    );
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    fake.kubelet().trimmed_timestamps(true);
    c.post(JOBS, job("trim", "echo a", false)).await;
    let pod = pod_in_phase(&fake, "trim", "Succeeded").await;
    let (_, stamped) = c
        .text(&format!("{PODS}/{}/log?timestamps=true", name(&pod)))
        .await;
    let (ts, rest) = stamped.split_once(' ').unwrap();
    assert_eq!(rest, "a\n");
    let frac = ts
        .trim_end_matches('Z')
        .rsplit_once('.')
        .map_or("", |(_, f)| f);
    assert!(!frac.ends_with('0') && frac.len() <= 9, "{ts}");
}

#[tokio::test]
async fn since_time_is_an_inclusive_bound_at_full_precision() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    c.post(
        JOBS,
        job(
            "since",
            "echo one; sleep 0.05; echo two; sleep 0.05; echo three",
            false,
        ),
    )
    .await;
    let pod = pod_in_phase(&fake, "since", "Succeeded").await;
    let path = format!("{PODS}/{}/log", name(&pod));
    let (_, stamped) = c.text(&format!("{path}?timestamps=true")).await;
    let ts: Vec<&str> = stamped
        .lines()
        .map(|l| l.split_once(' ').unwrap().0)
        .collect();
    let (_, from_two) = c.text(&format!("{path}?sinceTime={}", ts[1])).await;
    assert_eq!(
        from_two, "two\nthree\n",
        "the entry at sinceTime is included"
    );
    let second = format!("{}Z", &ts[0][..19]);
    let (_, whole) = c.text(&format!("{path}?sinceTime={second}")).await;
    assert_eq!(
        whole, "one\ntwo\nthree\n",
        "a whole second before the first entry"
    );
    let (code, v) = c
        .get(&format!("{path}?sinceTime={second}&sinceSeconds=5"))
        .await;
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")));
}

#[tokio::test]
async fn rotation_leaves_only_the_current_file_readable() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    fake.kubelet().rotate_at(300);
    let script: Vec<String> = (0..20).map(|i| format!("echo line-{i:02}")).collect();
    c.post(JOBS, job("rot", &script.join(";"), false)).await;
    let pod = pod_in_phase(&fake, "rot", "Succeeded").await;
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    assert!(fake.kubelet().rotations(uid, "task") >= 2);
    let all = String::from_utf8(fake.kubelet().written(uid, "task", None).unwrap()).unwrap();
    assert_eq!(all.lines().count(), 20);
    let (_, served) = c.text(&format!("{PODS}/{}/log", name(&pod))).await;
    assert!(
        served.lines().count() < 20 && all.ends_with(&served),
        "{served}"
    );
    assert!(served.ends_with("line-19\n") || served.is_empty());
}

#[tokio::test]
async fn a_final_fragment_is_sent_by_a_plain_read_but_not_by_follow() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    c.post(
        JOBS,
        job("frag", "echo first; sleep 0.3; echo -n tail", false),
    )
    .await;
    let pod = pod_in_phase(&fake, "frag", "Running").await;
    let path = format!("{PODS}/{}/log", name(&pod));
    let (followed, ended) = c
        .stream(&format!("{path}?follow=true"), Duration::from_secs(5))
        .await;
    assert!(ended, "follow ends when the container does");
    assert_eq!(followed, "first\n");
    let (_, plain) = c.text(&path).await;
    assert_eq!(plain, "first\ntail");
}

#[tokio::test]
async fn follow_streams_can_end_early_while_the_container_runs() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    fake.kubelet()
        .follow_ends_early(Some(FollowEnd::AfterEntries(1)));
    c.post(JOBS, job("early", "echo a; echo b; sleep 30", false))
        .await;
    let pod = pod_in_phase(&fake, "early", "Running").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (got, ended) = c
        .stream(
            &format!("{PODS}/{}/log?follow=true", name(&pod)),
            Duration::from_secs(3),
        )
        .await;
    assert!(ended);
    assert_eq!(got, "a\n");
    assert_eq!(phase(&fake, "early").as_deref(), Some("Running"));
}

#[tokio::test]
async fn watches_resume_from_a_version_send_bookmarks_and_expire_after_compaction() {
    let fake = FakeApiserver::start().await;
    fake.set_bookmark_interval(Duration::from_millis(100));
    let c = Client::new(&fake);
    let (_, list) = c.get(JOBS).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    c.post(JOBS, job("w1", "true", true)).await;
    let (text, _) = c
        .stream(
            &format!(
                "{JOBS}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"
            ),
            Duration::from_secs(3),
        )
        .await;
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "w1");
    assert!(events.iter().any(|e| e["type"] == "BOOKMARK"
        && e["object"]["metadata"]["resourceVersion"].is_string()
        && e["object"].get("spec").is_none()));

    // Label selectors apply to watches; a synthetic ADDED starts a watch without a version.
    let (text, _) = c
        .stream(
            &format!("{JOBS}?watch=1&labelSelector=berth.execution%3Dw1&timeoutSeconds=1"),
            Duration::from_secs(3),
        )
        .await;
    assert_eq!(text.lines().count(), 1 + text.matches("MODIFIED").count());

    fake.compact();
    let (text, ended) = c
        .stream(
            &format!("{JOBS}?watch=true&resourceVersion={rv}"),
            Duration::from_secs(3),
        )
        .await;
    assert!(ended);
    let e: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(status_of(&e["object"]), ("Status", "Expired", 410));
    assert!(
        e["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version: ")
    );
}

#[tokio::test]
async fn delete_preconditions_conflict_and_foreground_deletion_removes_pods_first() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    let (_, j) = c.post(JOBS, job("fg", "sleep 30", false)).await;
    let uid = j["metadata"]["uid"].as_str().unwrap().to_string();
    pod_in_phase(&fake, "fg", "Running").await;
    let (code, v) = c
        .delete(
            &format!("{JOBS}/fg"),
            json!({"propagationPolicy": "Foreground", "preconditions": {"uid": "wrong"}}),
        )
        .await;
    assert_eq!((code, status_of(&v)), (409, ("Status", "Conflict", 409)));
    assert_eq!(
        v["message"],
        format!(
            "Operation cannot be fulfilled on jobs.batch \"fg\": Precondition failed: UID in precondition: wrong, UID in object meta: {uid}"
        )
    );
    let rv = fake.resource_version();
    let (code, v) = c
        .delete(
            &format!("{JOBS}/fg"),
            json!({"propagationPolicy": "Foreground", "preconditions": {"uid": uid}}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(v["kind"], "Job", "the Job stays while its pods go");
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(v["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    let gone = fake
        .wait_for(Duration::from_secs(5), |f| {
            f.object("jobs", NS, "fg").is_none().then_some(())
        })
        .await;
    assert!(gone.is_some(), "{:?}", fake.object("jobs", NS, "fg"));
    assert!(fake.pods().is_empty());
    let deleted_rv = |path: &str| {
        let c = &c;
        let path = path.to_string();
        async move {
            let (text, _) = c
                .stream(
                    &format!("{path}?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
                    Duration::from_secs(3),
                )
                .await;
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|e| e["type"] == "DELETED")
                .map(|e| {
                    e["object"]["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                })
                .unwrap()
        }
    };
    assert!(
        deleted_rv(PODS).await < deleted_rv(JOBS).await,
        "the pod is deleted before the Job"
    );
}

#[tokio::test]
async fn a_lowered_pod_deadline_stops_it_and_keeps_its_logs_but_raising_it_is_invalid() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    c.post(JOBS, job("stop", "echo started; sleep 30", false))
        .await;
    let pod = pod_in_phase(&fake, "stop", "Running").await;
    let path = format!("{PODS}/{}", name(&pod));
    let (code, _) = c
        .patch(&path, json!({"spec": {"activeDeadlineSeconds": 1}}))
        .await;
    assert_eq!(code, 200);
    let (code, v) = c
        .patch(&path, json!({"spec": {"activeDeadlineSeconds": 5}}))
        .await;
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")));
    assert!(v["message"].as_str().unwrap().contains(
        "spec.activeDeadlineSeconds: Invalid value: 5: must be less than or equal to previous value"
    ));
    let (code, v) = c
        .patch(&path, json!({"spec": {"restartPolicy": "Always"}}))
        .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (422, Some("Invalid")),
        "other spec fields are immutable"
    );
    let failed = fake
        .wait_for(Duration::from_secs(4), |f| {
            pod_of(f, "stop")
                .filter(|p| p["status"]["containerStatuses"][0]["state"]["terminated"].is_object())
        })
        .await
        .expect("the kubelet stops it");
    assert_eq!(failed["status"]["phase"], "Failed");
    assert_eq!(failed["status"]["reason"], "DeadlineExceeded");
    assert_eq!(
        failed["status"]["message"],
        "Pod was active on the node longer than the specified deadline"
    );
    assert_eq!(
        failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        143
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        fake.object("pods", NS, &name(&pod)).is_some(),
        "the pod stays"
    );
    let (code, text) = c.text(&format!("{path}/log")).await;
    assert_eq!((code, text.as_str()), (200, "started\n"));
}

#[tokio::test]
async fn a_missing_runtime_class_refuses_the_pod_with_failed_create_events() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    let mut j = job("rc", "true", false);
    j["spec"]["template"]["spec"]["runtimeClassName"] = json!("gvisor");
    c.post(JOBS, j).await;
    // Each retry generates another pod name, so each is an event of its own.
    let evs = fake
        .wait_for(Duration::from_secs(3), |f| {
            let evs: Vec<Value> = f
                .events()
                .into_iter()
                .filter(|e| e["reason"] == "FailedCreate")
                .collect();
            (evs.len() >= 2).then_some(evs)
        })
        .await
        .expect("repeated FailedCreate");
    let ev = &evs[0];
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["involvedObject"]["kind"], "Job");
    let m = ev["message"].as_str().unwrap();
    assert!(
        m.starts_with("Error creating: pods \"rc-")
            && m.ends_with("\" is forbidden: pod rejected: RuntimeClass \"gvisor\" not found"),
        "{m}"
    );
    assert!(fake.pods().is_empty());
    fake.add_runtime_class("gvisor");
    pod_in_phase(&fake, "rc", "Succeeded").await;
}

#[tokio::test]
async fn an_unschedulable_pod_stays_pending_and_says_why() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    fake.kubelet().capacity(4.0, 1024.0 * 1024.0 * 1024.0);
    let mut j = job("big", "true", false);
    j["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"memory": "2Gi"}});
    c.post(JOBS, j).await;
    let pod = fake
        .wait_for(Duration::from_secs(3), |f| {
            pod_of(f, "big")
                .filter(|p| condition(p, "PodScheduled").is_some_and(|c| c["status"] == "False"))
        })
        .await
        .expect("unschedulable");
    let cond = condition(&pod, "PodScheduled").unwrap();
    assert_eq!(cond["reason"], "Unschedulable");
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .starts_with("0/1 nodes are available: 1 Insufficient memory.")
    );
    assert_eq!(pod["status"]["phase"], "Pending");
    let (code, v) = c.get(&format!("{PODS}/{}/log", name(&pod))).await;
    assert_eq!((code, v["reason"].as_str()), (400, Some("BadRequest")));
    assert!(
        fake.events()
            .iter()
            .any(|e| e["reason"] == "FailedScheduling" && e["type"] == "Warning")
    );
    fake.kubelet().capacity(4.0, 8.0 * 1024.0 * 1024.0 * 1024.0);
    pod_in_phase(&fake, "big", "Succeeded").await;
}

#[tokio::test]
async fn a_missing_image_backs_off_with_the_registry_words_and_logs_wait() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    fake.kubelet().missing_image("busybox:1.36");
    c.post(JOBS, job("pull", "true", false)).await;
    let pod = fake
        .wait_for(Duration::from_secs(3), |f| {
            pod_of(f, "pull").filter(|p| {
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    == "ImagePullBackOff"
            })
        })
        .await
        .expect("ImagePullBackOff");
    let msg = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap();
    assert!(
        msg.contains("docker.io/library/busybox:1.36: not found"),
        "{msg}"
    );
    let failed = fake
        .events()
        .into_iter()
        .find(|e| {
            e["reason"] == "Failed"
                && e["message"].as_str().unwrap().starts_with(
                    "Failed to pull image \"busybox:1.36\": rpc error: code = NotFound",
                )
        })
        .expect("Failed event");
    assert_eq!(failed["type"], "Warning");
    assert!(fake.events().iter().any(|e| e["reason"] == "BackOff"));
    let (code, v) = c.get(&format!("{PODS}/{}/log", name(&pod))).await;
    assert_eq!(code, 400);
    assert_eq!(
        v["message"],
        format!(
            "container \"task\" in pod \"{}\" is waiting to start: ImagePullBackOff",
            name(&pod)
        )
    );
    fake.kubelet().restore_image("busybox:1.36");
    pod_in_phase(&fake, "pull", "Succeeded").await;
}

#[tokio::test]
async fn an_oom_killed_container_and_a_script_per_image() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    fake.kubelet().image(
        "hog:1",
        Script::new().prints(Stream::Stdout, "allocating\n").oom(),
    );
    let mut j = job("oom", "ignored", false);
    j["spec"]["template"]["spec"]["containers"][0]["image"] = json!("hog:1");
    c.post(JOBS, j).await;
    let pod = pod_in_phase(&fake, "oom", "Failed").await;
    let t = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (t["exitCode"].as_i64(), t["reason"].as_str()),
        (Some(137), Some("OOMKilled"))
    );
    let (_, text) = c.text(&format!("{PODS}/{}/log", name(&pod))).await;
    assert_eq!(text, "allocating\n");
    let failed = fake
        .wait_for(Duration::from_secs(3), |f| {
            f.object("jobs", NS, "oom")
                .filter(|j| condition(j, "Failed").is_some())
        })
        .await
        .expect("the Job fails");
    assert_eq!(
        condition(&failed, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert!(condition(&failed, "FailureTarget").is_some());
}

#[tokio::test]
async fn the_apiserver_goes_down_and_up_while_the_pod_runs_on() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    c.post(
        JOBS,
        job("outage", "echo before; sleep 0.6; echo after", false),
    )
    .await;
    let pod = pod_in_phase(&fake, "outage", "Running").await;
    let path = format!("{PODS}/{}/log?follow=true", name(&pod));
    let follower = {
        let r = c.request(reqwest::Method::GET, &path).send().await.unwrap();
        tokio::spawn(async move {
            let mut s = r.bytes_stream();
            let mut n = 0;
            while let Some(Ok(_)) = s.next().await {
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.down().await;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), follower)
            .await
            .is_ok(),
        "open streams are cut"
    );
    let refused = c.request(reqwest::Method::GET, "/version").send().await;
    assert!(refused.is_err(), "connections are refused");
    tokio::time::sleep(Duration::from_millis(700)).await;
    fake.up().await;
    let pod = pod_in_phase(&fake, "outage", "Succeeded").await;
    let (code, text) = c.text(&format!("{PODS}/{}/log", name(&pod))).await;
    assert_eq!(
        (code, text.as_str()),
        (200, "before\nafter\n"),
        "it ran on through the outage"
    );
}

#[tokio::test]
async fn faults_answer_as_the_real_server_and_are_recorded() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    c.post(JOBS, job("f", "true", true)).await;
    fake.fail(Fault::status(403).verb("delete").resource("jobs").times(1));
    let (code, v) = c.delete(&format!("{JOBS}/f"), json!({})).await;
    assert_eq!(code, 403);
    assert_eq!(
        v["message"],
        "jobs.batch \"f\" is forbidden: User \"system:serviceaccount:berth:berth\" cannot delete resource \"jobs\" in API group \"batch\" in the namespace \"berth\""
    );
    fake.fail(Fault::too_many_requests(2).verb("get").times(1));
    let r = c
        .request(reqwest::Method::GET, &format!("{JOBS}/f"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    fake.fail(Fault::status(503).resource("jobs").times(2));
    assert_eq!(c.get(JOBS).await.0, 503);
    assert_eq!(c.get(JOBS).await.0, 503);
    assert_eq!(c.get(JOBS).await.0, 200, "the storm is over");
    fake.deny("delete", "batch", "jobs");
    let (_, review) = c
        .post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            json!({"spec": {"resourceAttributes": {"namespace": NS, "verb": "delete", "group": "batch", "resource": "jobs"}}}),
        )
        .await;
    assert_eq!(review["status"]["allowed"], false);
    assert_eq!(c.delete(&format!("{JOBS}/f"), json!({})).await.0, 403);
    let recorded = fake.requests();
    assert!(
        recorded
            .iter()
            .any(|r| r.verb == "delete" && r.resource == "jobs" && r.status == 403)
    );
    assert!(
        recorded
            .iter()
            .any(|r| r.verb == "list" && r.resource == "jobs" && r.status == 503)
    );
}

#[tokio::test]
async fn a_job_deadline_deletes_its_pod_and_logs_while_evictions_and_split_streams_behave() {
    let fake = FakeApiserver::start().await;
    let c = Client::new(&fake);
    // The Job's own deadline: the controller deletes the pod, and its logs go with it.
    let mut j = job("jdl", "echo hi; sleep 30", false);
    j["spec"]["activeDeadlineSeconds"] = json!(1);
    c.post(JOBS, j).await;
    let pod = pod_in_phase(&fake, "jdl", "Running").await;
    let failed = fake
        .wait_for(Duration::from_secs(5), |f| {
            f.object("jobs", NS, "jdl")
                .filter(|j| condition(j, "Failed").is_some())
        })
        .await
        .expect("the Job fails");
    assert_eq!(
        condition(&failed, "Failed").unwrap()["reason"],
        "DeadlineExceeded"
    );
    assert!(
        fake.object("pods", NS, &name(&pod)).is_none(),
        "its pod is gone"
    );
    let (code, _) = c.get(&format!("{PODS}/{}/log", name(&pod))).await;
    assert_eq!(code, 404, "and its logs");

    // Eviction: a DisruptionTarget condition, then a graceful delete.
    fake.kubelet().split_streams(true);
    let mut j = job("ev", "echo out; echo err >&2; sleep 30", false);
    j["spec"]["template"]["spec"]["initContainers"] =
        json!([{"name": "init", "image": "busybox:1.36", "command": ["true"]}]);
    j["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "side", "image": "busybox:1.36", "command": ["sleep", "30"]}));
    c.post(JOBS, j).await;
    let pod = pod_in_phase(&fake, "ev", "Running").await;
    let path = format!("{PODS}/{}/log", name(&pod));
    let (code, v) = c.get(&path).await;
    assert_eq!(code, 400);
    assert_eq!(
        v["message"],
        format!(
            "a container name must be specified for pod {}, choose one of: [task side] or one of the init containers: [init]",
            name(&pod)
        )
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, err) = c
        .text(&format!("{path}?container=task&stream=Stderr"))
        .await;
    assert_eq!(err, "err\n");
    let (code, v) = c
        .get(&format!("{path}?container=task&stream=Stdout&tailLines=1"))
        .await;
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")));
    fake.evict(&name(&pod)).unwrap();
    let evicted = fake.object("pods", NS, &name(&pod)).unwrap();
    assert_eq!(
        condition(&evicted, "DisruptionTarget").unwrap()["reason"],
        "EvictionByEvictionAPI"
    );
    assert!(evicted["metadata"]["deletionTimestamp"].is_string());
    let gone = fake
        .wait_for(Duration::from_secs(3), |f| {
            f.object("pods", NS, &name(&pod)).is_none().then_some(())
        })
        .await;
    assert!(gone.is_some(), "removed once the kubelet stopped it");
}
