//! The control-plane session: one outbound WebSocket, its handshake, keepalive, reconnects and
//! its single writer. It turns frames into [`SessionEvent`]s and drains the outbox; it knows
//! nothing about tasks or Docker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::control::shipper::{Link, Outbound};
use crate::protocol::{
    BERTH_PROTOCOL_HEADER, BERTH_PROTOCOL_VERSION, DecodeError, Hello, ServerMessage, WorkerMessage,
};
use crate::secret::Secret;

/// oz/1 write deadline.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial (TCP + TLS + upgrade) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the session needs to dial.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Control-plane URL (without `worker_id`).
    pub url: url::Url,
    /// This worker's id.
    pub worker_id: String,
    /// Bearer key.
    pub api_key: Secret,
    /// TLS trust.
    pub tls: Arc<rustls::ClientConfig>,
    /// Ping interval.
    pub heartbeat_interval: Duration,
    /// Largest inbound message.
    pub max_message_size: usize,
}

/// What the session tells its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A handshake succeeded; `berth` says whether the server accepted berth/1.
    Connected {
        /// berth/1 negotiated.
        berth: bool,
    },
    /// The connection is gone; a redial follows.
    Disconnected,
    /// A decoded server message.
    Message(ServerMessage),
    /// An assignment for a known task id whose payload did not decode.
    BadAssignment {
        /// The task named in the payload.
        task_id: String,
        /// What was wrong with it.
        error: String,
    },
}

/// Counters and flags the session keeps for status and metrics.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// A connection is up.
    pub connected: AtomicBool,
    /// The current connection negotiated berth/1.
    pub berth: AtomicBool,
    /// Redials after a failed dial.
    pub reconnects_dial_failed: AtomicU64,
    /// Redials after an established connection dropped.
    pub reconnects_remote_close: AtomicU64,
    /// Successful handshakes.
    pub handshakes: AtomicU64,
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The server refused the upgrade with an HTTP status.
    #[error("control plane answered HTTP {status}{hint}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// A hint for the operator.
        hint: &'static str,
    },
    /// Any other WebSocket/TLS/TCP failure.
    #[error("{0}")]
    Ws(#[from] tungstenite::Error),
    /// The dial took too long.
    #[error("dial timed out after {0:?}")]
    Timeout(Duration),
}

/// The URL actually dialled: `worker_id` set (replacing any existing one), other query
/// parameters kept.
pub fn dial_url(url: &url::Url, worker_id: &str) -> url::Url {
    let mut u = url.clone();
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "worker_id")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("worker_id", worker_id);
    u
}

async fn dial(s: &SessionSettings) -> Result<(Ws, bool), DialError> {
    let url = dial_url(&s.url, &s.worker_id);
    let mut req = url.as_str().into_client_request()?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", s.api_key.expose()))
        .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
    req.headers_mut().insert("Authorization", auth);
    req.headers_mut().insert(
        BERTH_PROTOCOL_HEADER,
        HeaderValue::from_static(BERTH_PROTOCOL_VERSION),
    );
    // The version and capabilities on every dial (PROTOCOL §7), so a server that rolls
    // its fleet forward knows which workers understand execution-scoped cancellation.
    if let Ok(v) = HeaderValue::from_str(&crate::protocol::worker_version()) {
        req.headers_mut()
            .insert(crate::protocol::WORKER_VERSION_HEADER, v);
    }
    req.headers_mut().insert(
        crate::protocol::WORKER_CAPABILITIES_HEADER,
        HeaderValue::from_static(crate::protocol::WORKER_CAPABILITIES),
    );
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(s.max_message_size))
        .max_frame_size(Some(s.max_message_size));
    let connector = Connector::Rustls(s.tls.clone());
    let fut =
        tokio_tungstenite::connect_async_tls_with_config(req, Some(cfg), true, Some(connector));
    let (ws, resp) = match timeout(DIAL_TIMEOUT, fut).await {
        Err(_) => return Err(DialError::Timeout(DIAL_TIMEOUT)),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let hint = match status {
                401 | 403 => ": the API key was refused; check the key and that it is a worker key",
                404 => ": wrong path; check control_plane.url",
                _ => "",
            };
            return Err(DialError::Refused { status, hint });
        }
        Ok(r) => r?,
    };
    let berth = resp
        .headers()
        .get(BERTH_PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        == Some(BERTH_PROTOCOL_VERSION);
    Ok((ws, berth))
}

/// One real handshake and an immediate close (`berth verify`): proves the URL, TLS trust and
/// the key. Returns whether the server accepted berth/1.
pub async fn probe(s: &SessionSettings) -> Result<bool, DialError> {
    let (mut ws, berth) = dial(s).await?;
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(berth)
}

enum End {
    /// The outbox closed and everything was written: the owner is done.
    Finished,
    /// The link dropped; redial.
    Dropped(String),
}

/// The session's connections to the rest of the worker.
pub struct SessionIo {
    /// The single outbound queue.
    pub outbox: mpsc::Receiver<Outbound>,
    /// Decoded server messages and link events.
    pub events: mpsc::Sender<SessionEvent>,
    /// Published link state (epoch, connected, berth/1).
    pub link: watch::Sender<Link>,
    /// The `worker_hello` to send first on every berth/1 connection.
    pub hello: watch::Receiver<Hello>,
}

/// Runs the session until the outbox is closed and drained (normal shutdown) or `abort` is
/// cancelled (shutdown deadline while the link is down).
pub async fn run(
    settings: SessionSettings,
    mut io: SessionIo,
    stats: Arc<SessionStats>,
    abort: CancellationToken,
) {
    let mut backoff = Backoff::default();
    // Messages taken from the outbox but not yet written: they survive a dropped link.
    let mut pending: VecDeque<Outbound> = VecDeque::new();
    let mut outbox_open = true;
    let mut epoch = 0u64;
    loop {
        let dialled = tokio::select! {
            r = dial(&settings) => r,
            _ = abort.cancelled() => return,
        };
        match dialled {
            Ok((ws, berth)) => {
                backoff.reset();
                epoch += 1;
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                stats.connected.store(true, Ordering::Relaxed);
                stats.berth.store(berth, Ordering::Relaxed);
                info!(url = %crate::transcript::redaction::display_url(settings.url.as_str()), berth, "connected to control plane");
                io.link.send_replace(Link {
                    epoch,
                    connected: true,
                    berth,
                });
                if io
                    .events
                    .send(SessionEvent::Connected { berth })
                    .await
                    .is_err()
                {
                    debug!("session owner is gone");
                }
                let conn = Conn { ws, berth, epoch };
                let end = drive(
                    conn,
                    &settings,
                    &mut io,
                    &mut outbox_open,
                    &mut pending,
                    &abort,
                )
                .await;
                stats.connected.store(false, Ordering::Relaxed);
                io.link.send_replace(Link {
                    epoch,
                    connected: false,
                    berth,
                });
                let _ = io.events.send(SessionEvent::Disconnected).await;
                match end {
                    End::Finished => return,
                    End::Dropped(why) => {
                        stats
                            .reconnects_remote_close
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(reason = %why, "control plane connection lost; redialling");
                    }
                }
            }
            Err(e) => {
                stats.reconnects_dial_failed.fetch_add(1, Ordering::Relaxed);
                warn!(url = %crate::transcript::redaction::display_url(settings.url.as_str()), error = %e, "cannot connect to control plane");
            }
        }
        let delay = backoff.next_delay();
        info!(delay_ms = delay.as_millis() as u64, "next dial");
        tokio::select! {
            _ = sleep(delay) => {}
            _ = abort.cancelled() => return,
        }
    }
}

struct Conn {
    ws: Ws,
    berth: bool,
    epoch: u64,
}

async fn send(ws: &mut Ws, msg: Message) -> Result<(), String> {
    match timeout(WRITE_TIMEOUT, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!("write timed out after {WRITE_TIMEOUT:?}")),
    }
}

async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_string().into(),
    };
    let _ = timeout(WRITE_TIMEOUT, ws.close(Some(frame))).await;
    // Give the server a moment to answer the close; never wait long.
    let _ = timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// The event a text frame becomes, if any (unknown and undecodable frames are logged here).
fn to_event(text: &str) -> Option<SessionEvent> {
    match ServerMessage::decode(text) {
        Ok(ServerMessage::Unknown(kind)) => {
            warn!(%kind, "ignoring message of unknown type");
            None
        }
        Ok(m) => Some(SessionEvent::Message(m)),
        Err(DecodeError::NotEnvelope(e)) => {
            // Never log the frame itself: it may carry secrets.
            warn!(bytes = text.len(), error = %e, "ignoring frame that is not a protocol message");
            None
        }
        Err(DecodeError::BadPayload {
            kind,
            task_id,
            source,
        }) => {
            warn!(%kind, task_id = ?task_id, error = %source, "ignoring message whose payload does not decode");
            match (kind.as_str(), task_id) {
                ("task_assignment", Some(task_id)) => Some(SessionEvent::BadAssignment {
                    task_id,
                    error: source.to_string(),
                }),
                _ => None,
            }
        }
    }
}

/// Writes one queued message; `Ok(false)` when it was dropped on purpose (stale or not for
/// this kind of server).
async fn write(conn: &mut Conn, o: &mut Outbound) -> Result<bool, String> {
    if o.epoch.is_some_and(|e| e != conn.epoch) {
        return Ok(false);
    }
    let Some(frame) = o.msg.encode_for(conn.berth) else {
        return Ok(false);
    };
    send(&mut conn.ws, Message::text(frame)).await?;
    if let Some(w) = o.written.take() {
        let _ = w.send(());
    }
    Ok(true)
}

async fn drive(
    mut conn: Conn,
    s: &SessionSettings,
    io: &mut SessionIo,
    outbox_open: &mut bool,
    pending: &mut VecDeque<Outbound>,
    abort: &CancellationToken,
) -> End {
    let hb = s.heartbeat_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + hb, hb);
    let mut last_rx = Instant::now();
    // At most one inbound message waits for the supervisor; meanwhile the socket is not read
    // but the outbox keeps draining, so neither side can block the other.
    let mut inbound: Option<SessionEvent> = None;
    if conn.berth {
        // worker_hello is the first message of every berth/1 connection.
        let hello = WorkerMessage::WorkerHello(Box::new(io.hello.borrow().clone()));
        if let Some(frame) = hello.encode_for(true)
            && let Err(e) = send(&mut conn.ws, Message::text(frame)).await
        {
            return End::Dropped(e);
        }
    }
    loop {
        // The one writer: queued messages go out in order before anything else is taken.
        while let Some(o) = pending.front_mut() {
            match write(&mut conn, o).await {
                Ok(_) => {
                    pending.pop_front();
                }
                Err(e) => return End::Dropped(e),
            }
        }
        if !*outbox_open {
            close(&mut conn.ws, CloseCode::Normal, "worker shutting down").await;
            return End::Finished;
        }
        let ws = &mut conn.ws;
        tokio::select! {
            permit = io.events.reserve(), if inbound.is_some() => {
                match permit {
                    Ok(p) => {
                        if let Some(ev) = inbound.take() {
                            p.send(ev);
                        }
                    }
                    Err(_) => inbound = None,
                }
            }
            frame = ws.next(), if inbound.is_none() => {
                last_rx = Instant::now();
                match frame {
                    None => return End::Dropped("connection closed".into()),
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        warn!(error = %e, limit = s.max_message_size, "inbound message too large; closing with 1009");
                        close(ws, CloseCode::Size, "message too big").await;
                        return End::Dropped(format!("oversized message: {e}"));
                    }
                    Some(Err(e)) => return End::Dropped(format!("read failed: {e}")),
                    Some(Ok(Message::Text(t))) => inbound = to_event(t.as_str()),
                    Some(Ok(Message::Binary(b))) => {
                        warn!(bytes = b.len(), "ignoring binary frame (protocol frames are text)");
                    }
                    Some(Ok(Message::Close(f))) => {
                        let why = f.map(|f| format!("{} {}", f.code, f.reason)).unwrap_or_default();
                        return End::Dropped(format!("server closed the connection {why}"));
                    }
                    Some(Ok(_)) => {} // ping/pong: liveness only; pongs are answered by tungstenite
                }
            }
            _ = ping.tick() => {
                if let Err(e) = send(ws, Message::Ping(Vec::new().into())).await {
                    return End::Dropped(e);
                }
            }
            _ = sleep_until(last_rx + hb * 2), if inbound.is_none() => {
                close(ws, CloseCode::Away, "no traffic").await;
                return End::Dropped(format!("nothing received for {:?}", hb * 2));
            }
            m = io.outbox.recv() => match m {
                Some(m) => {
                    debug!(kind = m.msg.kind(), task_id = m.msg.task_id(), "sending");
                    pending.push_back(m);
                }
                None => *outbox_open = false,
            },
            _ = abort.cancelled() => {
                close(ws, CloseCode::Normal, "worker shutting down").await;
                return End::Finished;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_url_sets_worker_id_and_keeps_other_parameters() {
        let u = url::Url::parse("wss://h/ws?a=1&worker_id=old&b=2").unwrap();
        assert_eq!(
            dial_url(&u, "w 1").as_str(),
            "wss://h/ws?a=1&b=2&worker_id=w+1"
        );
        let u = url::Url::parse("ws://127.0.0.1:9/ws").unwrap();
        assert_eq!(
            dial_url(&u, "w").as_str(),
            "ws://127.0.0.1:9/ws?worker_id=w"
        );
    }
}
