//! Which local-API connection to close when the connection cap is reached.
//!
//! The API serves a bounded number of connections (each costs a descriptor). Waiting for a
//! free slot before accepting let idle sockets hold every slot and then fill the kernel's
//! listen backlog, so a complete request — a liveness probe — could not even connect. So the
//! server always accepts, and at the cap closes the connection that has waited longest without
//! sending a complete request head: a client that has sent nothing useful loses its slot first,
//! and a connection whose request is being answered is never closed.
//!
//! [`Table`] and [`ShedLog`] are pure (time is passed in); [`Answering`] and [`TrackedBody`]
//! connect the table to hyper's service calls.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// One live connection in a [`Table`]; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a complete request head since then: just accepted, or idle after a response.
    Waiting(Instant),
    /// The head is complete; its response is not finished yet.
    Answering,
}

#[derive(Debug)]
struct Conn<T> {
    state: State,
    /// What closes it (the server's per-connection token).
    handle: T,
}

/// What [`Table::admit`] decided for a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<T> {
    /// Serve it; `shed` is the handle of the connection closed to make room, to be signalled.
    Admitted { id: ConnId, shed: Option<T> },
    /// Every live connection is answering a request: close the new one at once.
    Refused,
}

/// The live connections of one listener, at most `cap` of them.
#[derive(Debug)]
pub struct Table<T> {
    cap: usize,
    next: u64,
    live: HashMap<ConnId, Conn<T>>,
}

impl<T> Table<T> {
    /// An empty table serving at most `cap` connections.
    pub fn new(cap: usize) -> Self {
        Table {
            cap,
            next: 0,
            live: HashMap::new(),
        }
    }

    /// Connections counted as live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Admits a connection accepted at `now`, closed through `handle`. At the cap the one that
    /// has waited longest for a request head is dropped from the table and its handle returned;
    /// when none is waiting the new connection is refused.
    pub fn admit(&mut self, handle: T, now: Instant) -> Admission<T> {
        let shed = if self.live.len() >= self.cap {
            // A linear scan: the cap is a few hundred and this runs only when it is reached,
            // cheaper to keep than an ordered index updated on every request.
            let oldest = self
                .live
                .iter()
                .filter_map(|(id, c)| match c.state {
                    State::Waiting(since) => Some((since, *id)),
                    State::Answering => None,
                })
                .min();
            match oldest.and_then(|(_, id)| self.live.remove(&id)) {
                Some(c) => Some(c.handle),
                None => return Admission::Refused,
            }
        } else {
            None
        };
        let id = ConnId(self.next);
        self.next += 1;
        self.live.insert(
            id,
            Conn {
                state: State::Waiting(now),
                handle,
            },
        );
        Admission::Admitted { id, shed }
    }

    /// `id`'s request head is complete: it is not shed until its response is over. A connection
    /// already shed stays out (it is being closed).
    pub fn request_started(&mut self, id: ConnId) {
        if let Some(c) = self.live.get_mut(&id) {
            c.state = State::Answering;
        }
    }

    /// `id`'s response is over at `now`: it waits for its next request head from then on.
    pub fn request_finished(&mut self, id: ConnId, now: Instant) {
        if let Some(c) = self.live.get_mut(&id) {
            c.state = State::Waiting(now);
        }
    }

    /// `id` is closed (no-op when it was shed).
    pub fn remove(&mut self, id: ConnId) {
        self.live.remove(&id);
    }
}

/// The live connections of a listener as the server shares them with its connections' services.
pub type Registry = Mutex<Table<CancellationToken>>;

/// Connections closed at the cap, reported in one warning at most once per interval: a flood
/// of thousands of connections must not become thousands of log lines.
#[derive(Debug)]
pub struct ShedLog {
    every: Duration,
    last: Option<Instant>,
    idle: u64,
    busy: u64,
}

impl ShedLog {
    /// Reporting at most once per `every`.
    pub fn new(every: Duration) -> Self {
        ShedLog {
            every,
            last: None,
            idle: 0,
            busy: 0,
        }
    }

    /// An idle connection was shed (`true`) or a new one refused with every connection busy.
    pub fn count(&mut self, idle: bool) {
        if idle {
            self.idle += 1;
        } else {
            self.busy += 1;
        }
    }

    /// `(idle, busy)` closed since the last report, when one is due at `now` (the first at
    /// once, then at most once per interval); the counts restart.
    pub fn take(&mut self, now: Instant) -> Option<(u64, u64)> {
        let pending = self.idle + self.busy > 0;
        let quiet = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.every);
        if !(pending && quiet) {
            return None;
        }
        self.last = Some(now);
        let counts = (self.idle, self.busy);
        (self.idle, self.busy) = (0, 0);
        Some(counts)
    }

    /// When counts held back by the interval may be reported, as seen at `now` (`None`:
    /// nothing held back).
    pub fn due(&self, now: Instant) -> Option<Instant> {
        if self.idle + self.busy == 0 {
            return None;
        }
        Some(self.last.map_or(now, |t| t + self.every))
    }
}

/// Held while a connection's request is answered: created when hyper hands the service a
/// complete head, dropped when the response body has been written (or the connection dropped),
/// which makes the connection sheddable again from that moment.
pub struct Answering {
    registry: Arc<Registry>,
    id: ConnId,
}

impl Answering {
    /// `id`'s request head is complete.
    pub fn begin(registry: &Arc<Registry>, id: ConnId) -> Self {
        registry.lock().request_started(id);
        Answering {
            registry: registry.clone(),
            id,
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.registry
            .lock()
            .request_finished(self.id, Instant::now());
    }
}

/// A response body that keeps its connection [`Answering`] until hyper has written it all:
/// hyper drops the body after its last frame, not when the handler returns, so a large body
/// sent to a slow reader is still part of its request.
pub struct TrackedBody {
    inner: axum::body::Body,
    _answering: Answering,
}

impl TrackedBody {
    /// `inner`, keeping `answering` until it is written.
    pub fn new(inner: axum::body::Body, answering: Answering) -> Self {
        TrackedBody {
            inner,
            _answering: answering,
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    fn admitted<T: std::fmt::Debug>(a: Admission<T>) -> (ConnId, Option<T>) {
        match a {
            Admission::Admitted { id, shed } => (id, shed),
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn below_the_cap_every_connection_is_admitted_and_none_shed() {
        let t0 = Instant::now();
        let mut t = Table::new(3);
        for i in 0..3 {
            let (_, shed) = admitted(t.admit(i, at(t0, i)));
            assert_eq!(shed, None);
        }
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn at_the_cap_the_connection_waiting_longest_is_shed() {
        let t0 = Instant::now();
        let mut t = Table::new(3);
        // Accepted out of order in time: the oldest wait, not the oldest id, goes first.
        admitted(t.admit("b", at(t0, 2)));
        admitted(t.admit("a", at(t0, 1)));
        admitted(t.admit("c", at(t0, 3)));
        assert_eq!(admitted(t.admit("d", at(t0, 4))).1, Some("a"));
        assert_eq!(admitted(t.admit("e", at(t0, 5))).1, Some("b"));
        assert_eq!(admitted(t.admit("f", at(t0, 6))).1, Some("c"));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn connections_in_a_request_are_never_shed() {
        let t0 = Instant::now();
        let mut t = Table::new(3);
        let (old, _) = admitted(t.admit("old-busy", at(t0, 0)));
        admitted(t.admit("idle", at(t0, 1)));
        let (busy, _) = admitted(t.admit("busy", at(t0, 2)));
        t.request_started(old);
        t.request_started(busy);
        assert_eq!(admitted(t.admit("new", at(t0, 3))).1, Some("idle"));
        // Now "new" is the only one waiting: it goes next, the busy ones stay.
        assert_eq!(admitted(t.admit("newer", at(t0, 4))).1, Some("new"));
    }

    #[test]
    fn a_new_connection_is_refused_when_every_live_one_is_in_a_request() {
        let t0 = Instant::now();
        let mut t = Table::new(2);
        let (a, _) = admitted(t.admit("a", t0));
        let (b, _) = admitted(t.admit("b", t0));
        t.request_started(a);
        t.request_started(b);
        assert_eq!(t.admit("c", at(t0, 1)), Admission::Refused);
        assert_eq!(t.len(), 2);
        // Once one response is over that one is waiting again, and sheddable.
        t.request_finished(b, at(t0, 2));
        assert_eq!(admitted(t.admit("c", at(t0, 3))).1, Some("b"));
    }

    #[test]
    fn a_connection_back_to_waiting_after_its_response_waits_from_then() {
        let t0 = Instant::now();
        let mut t = Table::new(2);
        let (keep_alive, _) = admitted(t.admit("keep-alive", at(t0, 0)));
        admitted(t.admit("half-open", at(t0, 5)));
        t.request_started(keep_alive);
        t.request_finished(keep_alive, at(t0, 10));
        // Accepted first, but it finished a request after the other started waiting.
        assert_eq!(admitted(t.admit("new", at(t0, 11))).1, Some("half-open"));
    }

    #[test]
    fn closed_and_shed_connections_leave_the_table_and_stay_out() {
        let t0 = Instant::now();
        let mut t = Table::new(1);
        let (a, _) = admitted(t.admit("a", t0));
        let (b, shed) = admitted(t.admit("b", at(t0, 1)));
        assert_eq!(shed, Some("a"));
        // The shed connection's hyper task may still call in while it closes.
        t.request_started(a);
        t.request_finished(a, at(t0, 2));
        t.remove(a);
        assert_eq!(t.len(), 1);
        t.remove(b);
        assert!(t.is_empty());
        let (c, shed) = admitted(t.admit("c", at(t0, 3)));
        assert_eq!(shed, None);
        assert!(c != a && c != b, "ids are never reused");
    }

    #[test]
    fn a_table_with_no_room_refuses_everything() {
        let mut t = Table::new(0);
        assert_eq!(t.admit("a", Instant::now()), Admission::Refused);
    }

    #[test]
    fn sheds_are_reported_at_once_then_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut log = ShedLog::new(Duration::from_secs(10));
        assert_eq!(log.take(t0), None);
        assert_eq!(log.due(t0), None);
        log.count(true);
        assert_eq!(log.due(t0), Some(t0), "the first is due at once");
        assert_eq!(log.take(t0), Some((1, 0)));
        for _ in 0..500 {
            log.count(true);
        }
        log.count(false);
        assert_eq!(log.take(at(t0, 3)), None, "within the interval");
        assert_eq!(log.due(at(t0, 3)), Some(at(t0, 10)));
        assert_eq!(log.take(at(t0, 10)), Some((500, 1)));
        assert_eq!(log.due(at(t0, 10)), None);
        assert_eq!(log.take(at(t0, 30)), None, "nothing new to say");
    }
}
