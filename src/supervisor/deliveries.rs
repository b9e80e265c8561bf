//! Deliveries: each execution's transcript and result on their way to the control plane, one
//! shipper task each, until the server acknowledged the last byte and the result. Output
//! acknowledgements are persisted in batches (a stale offset after a crash only re-sends bytes
//! the server de-duplicates); the final one before a delivery ends, since retention deletes
//! only transcripts the journal shows as fully acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::control::shipper::{Acks, Link, Outbound, Shipper};
use crate::journal::Journal;
use crate::protocol::WorkerMessage;
use crate::transcript::spool::SharedSpool;

/// One execution being delivered.
pub(super) struct Delivery {
    pub(super) task_id: String,
    pub(super) spool: SharedSpool,
    acks: watch::Sender<Acks>,
    terminal: watch::Sender<Option<WorkerMessage>>,
}

impl Delivery {
    /// Its result is known (the execution ended) and owed to the server.
    pub(super) fn has_result(&self) -> bool {
        self.terminal.borrow().is_some()
    }
}

/// Every delivery of this worker, by execution id.
pub(super) struct Deliveries {
    map: HashMap<String, Delivery>,
    shippers: TaskTracker,
    stop: CancellationToken,
    done_tx: mpsc::Sender<String>,
    done_rx: mpsc::Receiver<String>,
    unpersisted: HashSet<String>,
    link: watch::Receiver<Link>,
    outbox: mpsc::Sender<Outbound>,
    journal: Arc<Journal>,
}

impl Deliveries {
    pub(super) fn new(
        link: watch::Receiver<Link>,
        outbox: mpsc::Sender<Outbound>,
        journal: Arc<Journal>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::channel(64);
        Deliveries {
            map: HashMap::new(),
            shippers: TaskTracker::new(),
            stop: CancellationToken::new(),
            done_tx,
            done_rx,
            unpersisted: HashSet::new(),
            link,
            outbox,
            journal,
        }
    }

    /// Starts delivering an execution's transcript from `acked`, and its result once known.
    pub(super) fn start(
        &mut self,
        task_id: &str,
        execution_id: &str,
        spool: SharedSpool,
        acked: u64,
        terminal: Option<WorkerMessage>,
    ) {
        let (acks, acks_rx) = watch::channel(Acks {
            offset: acked,
            terminal: false,
        });
        let (term_tx, term_rx) = watch::channel(terminal);
        let shipper = Shipper {
            task_id: task_id.to_string(),
            execution_id: execution_id.to_string(),
            spool: spool.clone(),
            link: self.link.clone(),
            acks: acks_rx,
            terminal: term_rx,
            outbox: self.outbox.clone(),
            journal: self.journal.clone(),
        };
        let stop = self.stop.clone();
        let done = self.done_tx.clone();
        let exec = execution_id.to_string();
        self.shippers.spawn(async move {
            if shipper.run(stop).await {
                let _ = done.send(exec).await;
            }
        });
        self.map.insert(
            execution_id.to_string(),
            Delivery {
                task_id: task_id.to_string(),
                spool,
                acks,
                terminal: term_tx,
            },
        );
    }

    pub(super) fn get(&self, execution_id: &str) -> Option<&Delivery> {
        self.map.get(execution_id)
    }

    pub(super) fn contains(&self, execution_id: &str) -> bool {
        self.map.contains_key(execution_id)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Delivery)> {
        self.map.iter()
    }

    /// Results known and not yet acknowledged (ended executions still owed to the server).
    pub(super) fn owed_results(&self) -> usize {
        self.map.values().filter(|d| d.has_result()).count()
    }

    /// The execution ended with `msg`: its shipper sends it after the transcript.
    pub(super) fn result(&self, execution_id: &str, msg: WorkerMessage) {
        if let Some(d) = self.map.get(execution_id) {
            d.terminal.send_replace(Some(msg));
        }
    }

    /// `output_ack`: the server stored the transcript up to `offset`.
    pub(super) fn output_ack(&mut self, execution_id: &str, offset: u64) {
        if let Some(d) = self.map.get(execution_id) {
            self.unpersisted.insert(execution_id.to_string());
            d.acks.send_if_modified(|a| {
                let grew = offset > a.offset;
                a.offset = a.offset.max(offset);
                grew
            });
        }
    }

    /// `ack`: the server stored the result carrying `message_id`.
    pub(super) fn ack(&self, message_id: &str) {
        for d in self.map.values() {
            let matches = d
                .terminal
                .borrow()
                .as_ref()
                .and_then(|t| t.ext())
                .is_some_and(|e| e.message_id == message_id);
            if matches {
                d.acks.send_modify(|a| a.terminal = true);
            }
        }
    }

    /// Writes acknowledged offsets received since the last call to the journal.
    pub(super) fn persist_acks(&mut self) {
        for execution_id in std::mem::take(&mut self.unpersisted) {
            let Some(d) = self.map.get(&execution_id) else {
                continue;
            };
            let offset = d.acks.borrow().offset;
            if let Err(e) = self.journal.set_acked(&execution_id, offset) {
                warn!(error = %e, "cannot record an output acknowledgement");
            }
        }
    }

    /// The next execution whose transcript and result are fully acknowledged.
    pub(super) async fn next_done(&mut self) -> Option<String> {
        self.done_rx.recv().await
    }

    /// Ends a finished delivery (its final offset made durable first).
    pub(super) fn finish(&mut self, execution_id: &str) {
        self.persist_acks();
        self.map.remove(execution_id);
    }

    /// Cancelled when the worker stops shipping (shutdown).
    pub(super) fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `work` among the shippers: waited for at shutdown like them.
    pub(super) fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.shippers.spawn(work);
    }

    /// Stops every shipper and waits for them.
    pub(super) async fn shutdown(&mut self) {
        self.persist_acks();
        self.stop.cancel();
        self.shippers.close();
        self.shippers.wait().await;
    }
}
