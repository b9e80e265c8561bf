//! Delivery of one execution's transcript and result: `task_output` from the last
//! acknowledged offset, then the terminal message, again after every reconnect, until the
//! server has acknowledged both (berth/1) or the result was written to a healthy socket (oz/1).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::journal::Journal;
use crate::protocol::{TerminalExt, WorkerMessage};
use crate::transcript::MAX_CHUNK;
use crate::transcript::spool::SpoolState;
use crate::transcript::spool::{SharedSpool, lock};

/// The state of the control-plane link, published by the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// Increments on every successful handshake.
    pub epoch: u64,
    /// A connection is up.
    pub connected: bool,
    /// It negotiated berth/1.
    pub berth: bool,
}

/// A message for the session's single writer.
#[derive(Debug)]
pub struct Outbound {
    /// The message.
    pub msg: WorkerMessage,
    /// When set, the message belongs to that connection and is dropped if it is not yet
    /// written when the link changes (its sender re-sends it on the new connection).
    pub epoch: Option<u64>,
    /// Told once the frame was written to the socket.
    pub written: Option<oneshot::Sender<()>>,
}

impl Outbound {
    /// A message that survives reconnects (claims, rejections).
    pub fn durable(msg: WorkerMessage) -> Self {
        Outbound {
            msg,
            epoch: None,
            written: None,
        }
    }
}

/// What the server acknowledged for one execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acks {
    /// Transcript bytes stored by the server.
    pub offset: u64,
    /// The terminal message was acknowledged.
    pub terminal: bool,
}

/// Everything one shipper needs.
pub struct Shipper {
    pub task_id: String,
    pub execution_id: String,
    /// The transcript.
    pub spool: SharedSpool,
    /// Link state.
    pub link: watch::Receiver<Link>,
    /// Acknowledgements routed by the supervisor.
    pub acks: watch::Receiver<Acks>,
    /// The terminal message, once decided.
    pub terminal: watch::Receiver<Option<WorkerMessage>>,
    /// The session's queue.
    pub outbox: mpsc::Sender<Outbound>,
    /// Durable state.
    pub journal: Arc<Journal>,
}

/// Adds the berth/1 fields that depend on the transcript to a terminal message.
fn with_length(msg: &WorkerMessage, len: u64) -> WorkerMessage {
    let mut m = msg.clone();
    if let WorkerMessage::TaskCompleted { ext: Some(e), .. }
    | WorkerMessage::TaskFailed { ext: Some(e), .. } = &mut m
    {
        *e = TerminalExt {
            transcript_bytes: len,
            ..e.clone()
        };
    }
    m
}

impl Shipper {
    /// Runs until delivery is complete (true) or `stop` fires (false).
    pub async fn run(mut self, stop: CancellationToken) -> bool {
        let mut spool_state = lock(&self.spool).subscribe();
        loop {
            let link = *self.link.borrow_and_update();
            if !link.connected {
                tokio::select! {
                    _ = self.link.changed() => continue,
                    _ = stop.cancelled() => return false,
                }
            }
            let done = if link.berth {
                self.ship_berth(link.epoch, &mut spool_state, &stop).await
            } else {
                self.ship_oz(link.epoch, &stop).await
            };
            match done {
                Some(true) => {
                    if let Err(e) = self.journal.terminal_done(&self.execution_id) {
                        warn!(error = %e, "cannot record delivery");
                    }
                    debug!(task_id = %self.task_id, execution_id = %self.execution_id, "delivered");
                    return true;
                }
                Some(false) => return false,
                None => {} // the link changed: start over on the new connection
            }
        }
    }

    async fn send(&self, msg: WorkerMessage, epoch: u64) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        let o = Outbound {
            msg,
            epoch: Some(epoch),
            written: Some(tx),
        };
        self.outbox.send(o).await.ok().map(|_| rx)
    }

    /// `Some(true)`: delivered; `Some(false)`: stopped; `None`: link changed.
    async fn ship_berth(
        &mut self,
        epoch: u64,
        spool_state: &mut watch::Receiver<SpoolState>,
        stop: &CancellationToken,
    ) -> Option<bool> {
        let mut sent = self.acks.borrow().offset;
        let mut terminal_sent = false;
        loop {
            let state = *spool_state.borrow_and_update();
            // Read outside the lock's await points: one chunk at a time keeps memory bounded.
            while sent < state.len {
                let chunk = lock(&self.spool).read_chunk(sent, MAX_CHUNK);
                let (stream, data) = match chunk {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "cannot read the transcript spool");
                        break;
                    }
                };
                let n = data.len() as u64;
                let msg = WorkerMessage::TaskOutput {
                    task_id: self.task_id.clone(),
                    execution_id: self.execution_id.clone(),
                    offset: sent,
                    stream,
                    data,
                };
                tokio::select! {
                    r = self.send(msg, epoch) => if r.is_none() { return Some(false) },
                    _ = stop.cancelled() => return Some(false),
                }
                sent += n;
                if self.link.has_changed().unwrap_or(true) {
                    return None;
                }
            }
            let term = self.terminal.borrow().clone();
            if let Some(t) = term
                && state.finished
                && sent >= state.len
                && !terminal_sent
            {
                // All output precedes the result.
                if self.send(with_length(&t, state.len), epoch).await.is_none() {
                    return Some(false);
                }
                terminal_sent = true;
            }
            let acks = *self.acks.borrow();
            if state.finished && acks.terminal && acks.offset >= state.len {
                return Some(true);
            }
            tokio::select! {
                r = spool_state.changed() => if r.is_err() { return Some(false) },
                _ = self.link.changed() => return None,
                _ = self.acks.changed() => {}
                _ = self.terminal.changed() => {}
                _ = stop.cancelled() => return Some(false),
            }
        }
    }

    async fn ship_oz(&mut self, epoch: u64, stop: &CancellationToken) -> Option<bool> {
        loop {
            let term = self.terminal.borrow_and_update().clone();
            if let Some(t) = term {
                let Some(written) = self.send(t, epoch).await else {
                    return Some(false);
                };
                return tokio::select! {
                    r = written => if r.is_ok() { Some(true) } else { None },
                    _ = self.link.changed() => None,
                    _ = stop.cancelled() => Some(false),
                };
            }
            tokio::select! {
                r = self.terminal.changed() => if r.is_err() { return Some(false) },
                _ = self.link.changed() => return None,
                _ = stop.cancelled() => return Some(false),
            }
        }
    }
}
