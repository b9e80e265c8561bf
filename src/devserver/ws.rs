//! The worker endpoint: bearer check, berth/1 negotiation, one reader and one writer per
//! connection.

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::ControlPlane;
use super::state::Handshake;
use crate::protocol::{BERTH_PROTOCOL_HEADER, BERTH_PROTOCOL_VERSION, WorkerMessage};

/// `GET /api/v1/selfhosted/worker/ws?worker_id=…`.
pub(super) async fn upgrade(
    ws: WebSocketUpgrade,
    State(cp): State<ControlPlane>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let opts = &cp.shared.opts;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {}", opts.api_key) {
        warn!("worker connection refused: bad or missing API key");
        return (StatusCode::UNAUTHORIZED, "invalid API key").into_response();
    }
    let Some(worker_id) = q.get("worker_id").filter(|w| !w.is_empty()).cloned() else {
        return (
            StatusCode::BAD_REQUEST,
            "worker_id query parameter is required",
        )
            .into_response();
    };
    let offered = headers
        .get(BERTH_PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        == Some(BERTH_PROTOCOL_VERSION);
    let berth = opts.accept_berth && offered;
    // Both headers are bounded like the version: a worker cannot grow the server's state.
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).map(|v| {
            v.chars()
                .take(crate::protocol::WORKER_VERSION_MAX)
                .collect::<String>()
        })
    };
    let handshake = Handshake {
        version: header(crate::protocol::WORKER_VERSION_HEADER),
        capabilities: header(crate::protocol::WORKER_CAPABILITIES_HEADER),
    };
    let mut resp = ws
        .max_message_size(opts.max_message_size)
        .on_upgrade(move |socket| serve(socket, cp, worker_id, berth, handshake));
    if berth {
        resp.headers_mut().insert(
            BERTH_PROTOCOL_HEADER,
            HeaderValue::from_static(BERTH_PROTOCOL_VERSION),
        );
    }
    resp
}

async fn serve(
    socket: WebSocket,
    cp: ControlPlane,
    worker_id: String,
    berth: bool,
    handshake: Handshake,
) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<String>(256);
    // Register the sender before the state knows the connection, so the assignments the
    // connect dispatches have somewhere to go.
    let conn = cp
        .shared
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    {
        let mut conns = cp.shared.conns.lock();
        conns.insert(conn, tx);
    }
    cp.apply(|s| {
        let out = s.connect(&worker_id, conn, berth, chrono::Utc::now());
        s.set_handshake(&worker_id, handshake);
        ((), out)
    });
    info!(%worker_id, berth, "worker connected");
    let stop = cp.stop.clone();
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => if sink.send(Message::Text(f.into())).await.is_err() { break },
                None => break,
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    cp.record_frame(&worker_id, t.as_str());
                    match WorkerMessage::decode(t.as_str()) {
                        Ok(WorkerMessage::DebugArchiveLogsUploaded(a)) => cp.archive_acked(&worker_id, *a),
                        Ok(m) => cp.apply(|s| ((), s.on_message(&worker_id, m, chrono::Utc::now()))),
                        Err(e) => warn!(%worker_id, error = %e, "ignoring undecodable worker frame"),
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = stop.cancelled() => break,
        }
    }
    {
        let mut conns = cp.shared.conns.lock();
        conns.remove(&conn);
    }
    cp.apply(|s| ((), s.disconnect(&worker_id, conn)));
    info!(%worker_id, "worker disconnected");
}
