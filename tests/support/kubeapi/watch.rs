//! Watches: newline-delimited JSON events over a chunked response, from a resourceVersion
//! (or from the current state, as synthetic ADDED events), with bookmarks, selectors,
//! `timeoutSeconds` and 410 Gone for a resourceVersion older than the kept history.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::resources::{Kind, ResInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::state::Shared;
use super::status::{self, ApiError};
use super::store::meta;

pub struct WatchRequest {
    pub res: &'static ResInfo,
    pub ns: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub send_initial_events: bool,
}

fn line(etype: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": etype, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn selected(w: &WatchRequest, o: &Value) -> bool {
    w.ns.as_deref().is_none_or(|ns| meta(o, "namespace") == ns)
        && w.labels.matches(o["metadata"].get("labels"))
        && w.fields.matches(o, w.res.kind)
}

fn bookmark(w: &WatchRequest, rv: u64, initial_end: bool) -> Value {
    let mut m = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": w.res.kind_name, "apiVersion": w.res.api_version(), "metadata": m})
}

/// Starts a watch; the receiver yields the body's chunks.
pub fn start(
    shared: &Arc<Shared>,
    w: WatchRequest,
) -> Result<mpsc::Receiver<Result<Bytes, std::io::Error>>, ApiError> {
    let (tx, rx) = mpsc::channel(64);
    let from = match w.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
            status::invalid(
                "",
                "",
                "",
                vec![status::Cause::invalid(
                    "resourceVersion",
                    &json!(rv),
                    "invalid value, must be a non-negative integer",
                )],
            )
        })?),
    };
    let mut first: Vec<Bytes> = Vec::new();
    let cursor = {
        let st = shared.state.lock();
        match from {
            None => {
                let rv = st.store.rv();
                for o in st.store.list(w.res.kind, w.ns.as_deref()) {
                    if selected(&w, &o) {
                        first.push(line("ADDED", &o));
                    }
                }
                if w.send_initial_events && w.bookmarks {
                    first.push(line("BOOKMARK", &bookmark(&w, rv, true)));
                }
                rv
            }
            Some(rv) => {
                if rv < st.store.floor() {
                    let e = status::expired(format!(
                        "too old resource version: {rv} ({})",
                        st.store.floor() + 1
                    ));
                    first.push(line("ERROR", &e.body()));
                    let _ = tx.try_send(Ok(first.remove(0)));
                    return Ok(rx);
                }
                rv
            }
        }
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        for b in first {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
        let started = tokio::time::Instant::now();
        let mut cursor = cursor;
        let every = shared.state.lock().bookmark_every;
        let mut next_bookmark = tokio::time::Instant::now() + every;
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (out, rv_now) = {
                let st = shared.state.lock();
                let changes = st
                    .store
                    .changes_since(cursor, w.res.kind)
                    .unwrap_or_default();
                let mut out = Vec::new();
                for c in changes {
                    cursor = c.rv;
                    let now_in = c.etype != "DELETED" && selected(&w, &c.object);
                    let was_in = match (&c.prev, c.etype) {
                        (Some(p), _) => selected(&w, p),
                        (None, "DELETED") => selected(&w, &c.object),
                        _ => false,
                    };
                    match (was_in, now_in) {
                        (true, true) => out.push(line("MODIFIED", &c.object)),
                        (false, true) => out.push(line("ADDED", &c.object)),
                        (true, false) => out.push(line("DELETED", &c.object)),
                        (false, false) => {}
                    }
                }
                (out, st.store.rv())
            };
            for b in out {
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            let now = tokio::time::Instant::now();
            if w.bookmarks && now >= next_bookmark {
                cursor = cursor.max(rv_now);
                if tx
                    .send(Ok(line("BOOKMARK", &bookmark(&w, cursor, false))))
                    .await
                    .is_err()
                {
                    return;
                }
                next_bookmark = now + every;
            }
            if w.timeout.is_some_and(|t| now >= started + t) || tx.is_closed() {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
    Ok(rx)
}

/// The kind of the list (`JobList`).
pub fn list_kind(res: &ResInfo) -> String {
    format!("{}List", res.kind_name)
}

/// Objects of the kind (for callers that already hold the selectors).
pub fn matches(res: &ResInfo, labels: &LabelSelector, fields: &FieldSelector, o: &Value) -> bool {
    let _: Kind = res.kind;
    labels.matches(o["metadata"].get("labels")) && fields.matches(o, res.kind)
}
