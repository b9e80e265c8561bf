//! Debug archives (PROTOCOL §8.4) end to end: the real berth binary on real Docker against the
//! embedded control plane, uploading to the control plane's own target (PUT) and to a scripted
//! target on loopback (multipart POST, retries, a redirect), staying silent for executions it
//! does not own, and still answering after a restart during the cleanup grace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use berth::archive::crc32c::Crc32c;
use berth::devserver::state::{SubmitRequest, TaskRecord};
use berth::devserver::{ArchiveOptions, ControlPlane};
use berth::protocol::ArchiveAck;
use serde_json::{Value, json};
use support::upload::{Answer, UploadTarget, ack_of, multipart_parts, request, silent};
use support::*;

/// What the task prints: one line on each stream, then 300 numbered lines.
const SCRIPT: &str = "echo out-line; echo err-line >&2; i=0; while [ $i -lt 300 ]; do echo \"row $i\"; i=$((i+1)); done";
/// Secrets in the target the worker must never write to its log.
const URL_SECRET: &str = "sig=URLSECRET42";
const HEADER_SECRET: &str = "HEADERSECRET42";

fn submit(cp: &ControlPlane) -> TaskRecord {
    cp.submit(SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["sh".into(), "-c".into(), SCRIPT.into()],
        ..SubmitRequest::default()
    })
}

fn put_to(target: &UploadTarget, path: &str) -> Value {
    json!({"url": target.url(&format!("{path}?{URL_SECRET}")), "method": "PUT",
           "headers": {"x-amz-meta-b": HEADER_SECRET, "x-amz-meta-a": "1"}})
}

fn lines(object: &[u8]) -> Vec<Value> {
    std::str::from_utf8(object)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The ack's size and checksums are the object's.
fn sums_match(ack: &ArchiveAck, object: &[u8]) {
    assert_eq!(ack.bytes, Some(object.len() as u64));
    let mut c = Crc32c::default();
    c.update(object);
    assert_eq!(ack.crc32c.as_deref(), Some(c.base64().as_str()));
    let d = ring::digest::digest(&ring::digest::SHA256, object);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(ack.sha256.as_deref(), Some(hex.as_str()));
}

fn data_of(records: &[Value]) -> String {
    records
        .iter()
        .filter(|r| r["kind"] == "data")
        .map(|r| r["data"].as_str().unwrap().to_string())
        .collect()
}

async fn connected(cp: &ControlPlane, id: &str) {
    until("worker connected", || {
        cp.workers().iter().any(|w| w.worker_id == id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_archives_its_executions_and_stays_silent_for_others() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let target = UploadTarget::start().await;
    let state = tempfile::tempdir().unwrap();
    let capture = state.path().join("capture");
    let id = worker_id("archive");
    let _cleanup = Cleanup(id.clone());
    let yaml = format!("debug_log_capture:\n  directory: {}\n", capture.display());
    let w = Berth(worker_process_with(&cp, &id, state.path(), &[], &yaml));
    connected(&cp, &id).await;
    let t = submit(&cp);
    let done = cp.wait(&t.id, Duration::from_secs(90)).await.unwrap();
    assert!(done.state.is_terminal(), "{done:?}");

    // PUT to the control plane's own target: the object is the execution's stdout and
    // stderr as numbered data records, and the answer's size and checksums are its own.
    let r = cp
        .request_archive(&t.id, &ArchiveOptions::default())
        .unwrap();
    let ack = ack_of(&cp, &r.archive_id).await;
    assert_eq!(
        (ack.outcome.as_str(), ack.reason_code.as_str()),
        ("uploaded", "")
    );
    assert!(!ack.truncated);
    assert_eq!(ack.backend_kind, "docker");
    assert_eq!(ack.capture_status.as_deref(), Some("complete"));
    let object = cp.archive_object(&r.archive_id).unwrap();
    sums_match(&ack, &object);
    let recs = lines(&object);
    let text = data_of(&recs);
    assert!(
        text.contains("out-line\n") && text.contains("row 299\n"),
        "{text}"
    );
    assert!(
        !text.contains("[berth]"),
        "berth's own lines are not archived"
    );
    let streams: Vec<&str> = recs.iter().map(|r| r["stream"].as_str().unwrap()).collect();
    assert!(streams.contains(&"stderr") && streams.contains(&"stdout"));
    let seqs: Vec<u64> = recs
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=recs.len() as u64).collect::<Vec<_>>());
    assert!(
        recs.iter()
            .all(|r| r["phase"] == "container" && r["backend"] == "docker")
    );

    // Multipart POST: the fields in key order, then the file part, last.
    let post = json!({"url": target.url(&format!("/post?{URL_SECRET}")), "method": "POST",
                      "multipart_fields": {"key": "k1", "acl": "private", "policy": HEADER_SECRET}});
    cp.send_raw(&id, &request(&t, "a-post", post, json!({})));
    let ack = ack_of(&cp, "a-post").await;
    assert_eq!(ack.outcome, "uploaded", "{ack:?}");
    let got = target.received_at("/post");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    let parts = multipart_parts(got[0].header("content-type").unwrap(), &got[0].body);
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["acl", "key", "policy", "file"]);
    assert_eq!(parts[3].1.as_deref(), Some("worker-logs.ndjson"));
    sums_match(&ack, &parts[3].2);
    assert_eq!(
        got[0].header("content-length"),
        Some(got[0].body.len().to_string().as_str())
    );

    // PUT to a scripted target: headers applied, the ndjson type set, 429 and 503 retried
    // with the identical object.
    target.script(vec![Answer::status(429), Answer::status(503)]);
    cp.send_raw(
        &id,
        &request(&t, "a-retry", put_to(&target, "/retry"), json!({})),
    );
    let ack = ack_of(&cp, "a-retry").await;
    assert_eq!(ack.outcome, "uploaded", "{ack:?}");
    let got = target.received_at("/retry");
    assert_eq!(got.len(), 3, "two retries");
    assert!(got.iter().all(|g| g.body == got[0].body));
    assert_eq!(got[0].header("content-type"), Some("application/x-ndjson"));
    assert_eq!(got[0].header("x-amz-meta-b"), Some(HEADER_SECRET));
    sums_match(&ack, &got[0].body);

    // A redirect is never followed.
    target.script(vec![Answer {
        status: 307,
        location: Some(target.url("/elsewhere")),
        delay: Duration::ZERO,
    }]);
    cp.send_raw(
        &id,
        &request(&t, "a-redirect", put_to(&target, "/redirect"), json!({})),
    );
    let ack = ack_of(&cp, "a-redirect").await;
    assert_eq!(
        (ack.outcome.as_str(), ack.reason_code.as_str()),
        ("failed", "upload_rejected")
    );
    assert!(ack.bytes.is_none() && ack.crc32c.is_none());
    assert_eq!(target.received_at("/redirect").len(), 1);
    assert!(target.received_at("/elsewhere").is_empty());

    // Expired on receipt: answered at once, nothing uploaded.
    let past = (chrono::Utc::now() - chrono::Duration::seconds(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    cp.send_raw(
        &id,
        &request(
            &t,
            "a-expired",
            put_to(&target, "/expired"),
            json!({"expires_at": past}),
        ),
    );
    let ack = ack_of(&cp, "a-expired").await;
    assert_eq!(ack.reason_code, "request_expired");
    assert!(target.received_at("/expired").is_empty());

    // Over max_bytes: first and last records kept, a truncation record between them.
    cp.send_raw(
        &id,
        &request(
            &t,
            "a-trunc",
            put_to(&target, "/trunc"),
            json!({"max_bytes": 2000}),
        ),
    );
    let ack = ack_of(&cp, "a-trunc").await;
    assert_eq!(ack.outcome, "uploaded", "{ack:?}");
    assert!(ack.truncated);
    let body = target.received_at("/trunc")[0].body.clone();
    assert!(body.len() <= 2000, "{} bytes", body.len());
    sums_match(&ack, &body);
    let recs = lines(&body);
    let cut: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "truncation").collect();
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0]["policy"], "first_last");
    // The kept records are a head and a tail of the whole output (whatever chunks the engine
    // made), and the record counts exactly what is missing between them.
    let at = recs.iter().position(|r| r["kind"] == "truncation").unwrap();
    let (head, tail) = (data_of(&recs[..at]), data_of(&recs[at + 1..]));
    assert!(
        text.starts_with(&head) && text.ends_with(&tail),
        "{head:?} / {tail:?}"
    );
    assert_eq!(
        cut[0]["omitted_bytes_at_least"].as_u64().unwrap(),
        (text.len() - head.len() - tail.len()) as u64
    );

    // Not this process's execution (same run, another execution), and a malformed request
    // for it: complete silence.
    cp.send_raw(
        &id,
        &request(
            &t,
            "a-other",
            put_to(&target, "/other"),
            json!({"execution_id": "someone-else"}),
        ),
    );
    cp.send_raw(
        &id,
        &request(
            &t,
            "a-other-bad",
            put_to(&target, "/other"),
            json!({"execution_id": "someone-else", "protocol_version": 99}),
        ),
    );
    silent(&cp, "a-other").await;
    silent(&cp, "a-other-bad").await;
    assert!(target.received_at("/other").is_empty());

    // A restart inside the grace: the journal still says whose the execution is.
    drop(w);
    let restarted = chrono::Utc::now();
    let _w = Berth(worker_process_with(&cp, &id, state.path(), &[], &yaml));
    until("the restarted worker is connected", || {
        cp.workers()
            .iter()
            .any(|w| w.worker_id == id && w.connected_at > restarted)
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let r = loop {
        if let Some(r) = cp.request_archive(&t.id, &ArchiveOptions::default()) {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection for the request"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ack = ack_of(&cp, &r.archive_id).await;
    assert_eq!(ack.outcome, "uploaded", "{ack:?}");

    let log = std::fs::read_to_string(state.path().with_extension("log")).unwrap();
    for secret in [URL_SECRET, HEADER_SECRET, "someone-else"] {
        assert!(!log.contains(secret), "the log shows {secret}");
    }
    let left: Vec<_> = std::fs::read_dir(capture.join("oz-agent-worker/debug-logs"))
        .unwrap()
        .collect();
    assert!(
        left.is_empty(),
        "snapshot files are removed after their upload"
    );
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oz_server_gets_no_archive_message_it_did_not_ask_for_and_an_answer_when_it_asks() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", false, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id("archive-oz");
    let _cleanup = Cleanup(id.clone());
    let yaml = format!(
        "debug_log_capture:\n  directory: {}\n",
        state.path().join("capture").display()
    );
    let _w = Berth(worker_process_with(&cp, &id, state.path(), &[], &yaml));
    connected(&cp, &id).await;
    let t = submit(&cp);
    let done = cp.wait(&t.id, Duration::from_secs(90)).await.unwrap();
    assert!(done.state.is_terminal(), "{done:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cp.archives().is_empty(),
        "nothing was asked, nothing is sent"
    );
    assert!(
        cp.unknown_task_messages()
            .iter()
            .all(|(kind, _)| !kind.starts_with("debug_archive")),
    );
    let r = cp
        .request_archive(&t.id, &ArchiveOptions::default())
        .unwrap();
    let ack = ack_of(&cp, &r.archive_id).await;
    assert_eq!(ack.outcome, "uploaded", "{ack:?}");
    cp.shutdown();
}
