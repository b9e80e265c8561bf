//! Requests remembered by `request_id` (PROTOCOL §8.4): up to 1,024, each until its
//! `expires_at`. A duplicate with the same contents replays the answer (or waits for the one in
//! flight); different contents under the same id are refused.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::protocol::ArchiveAck;

/// Most remembered requests.
pub const CAPACITY: usize = 1024;

enum State {
    InFlight(watch::Receiver<Option<ArchiveAck>>),
    Done(Box<ArchiveAck>),
}

struct Slot {
    fingerprint: [u8; 32],
    expires_at: DateTime<Utc>,
    state: State,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Lookup {
    /// First time: do the work, then [`Cache::complete`] (the sender tells duplicates).
    New(watch::Sender<Option<ArchiveAck>>),
    /// Already answered: send this again.
    Replay(Box<ArchiveAck>),
    /// In flight: its answer arrives here.
    Wait(watch::Receiver<Option<ArchiveAck>>),
    /// Same id, different contents: `invalid_request`.
    Conflict,
    /// Full of unexpired entries: `request_capacity_exhausted`.
    Full,
}

/// The remembered requests.
pub struct Cache {
    slots: HashMap<String, Slot>,
    capacity: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::with_capacity(CAPACITY)
    }
}

impl Cache {
    /// A cache of at most `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Cache {
            slots: HashMap::new(),
            capacity,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Looks `request_id` up at `now`, registering it when new.
    pub fn lookup(
        &mut self,
        request_id: &str,
        fingerprint: [u8; 32],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Lookup {
        // Answered requests go at their expiry; one in flight stays until it is answered.
        self.slots
            .retain(|_, s| matches!(s.state, State::InFlight(_)) || s.expires_at > now);
        if let Some(s) = self.slots.get(request_id) {
            if s.fingerprint != fingerprint {
                return Lookup::Conflict;
            }
            return match &s.state {
                State::Done(a) => Lookup::Replay(a.clone()),
                State::InFlight(rx) => Lookup::Wait(rx.clone()),
            };
        }
        if self.slots.len() >= self.capacity {
            return Lookup::Full;
        }
        let (tx, rx) = watch::channel(None);
        self.slots.insert(
            request_id.to_string(),
            Slot {
                fingerprint,
                expires_at,
                state: State::InFlight(rx),
            },
        );
        Lookup::New(tx)
    }

    /// Records the answer of a request registered by [`Cache::lookup`].
    pub fn complete(&mut self, request_id: &str, ack: ArchiveAck) {
        if let Some(s) = self.slots.get_mut(request_id) {
            s.state = State::Done(Box::new(ack));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn ack(id: &str) -> ArchiveAck {
        ArchiveAck {
            protocol_version: 1,
            request_id: id.into(),
            outcome: "uploaded".into(),
            ..ArchiveAck::default()
        }
    }

    #[test]
    fn a_duplicate_waits_then_replays_and_different_contents_conflict() {
        let mut c = Cache::default();
        let Lookup::New(tx) = c.lookup("r", [1; 32], t(60), t(0)) else {
            panic!("new");
        };
        let Lookup::Wait(mut rx) = c.lookup("r", [1; 32], t(60), t(1)) else {
            panic!("wait");
        };
        assert!(matches!(
            c.lookup("r", [2; 32], t(60), t(1)),
            Lookup::Conflict
        ));
        tx.send_replace(Some(ack("r")));
        c.complete("r", ack("r"));
        assert_eq!(rx.borrow_and_update().clone(), Some(ack("r")));
        assert!(matches!(c.lookup("r", [1; 32], t(60), t(2)), Lookup::Replay(a) if *a == ack("r")));
        // After its expiry it is forgotten: the same id is new again.
        assert!(matches!(
            c.lookup("r", [2; 32], t(120), t(61)),
            Lookup::New(_)
        ));
    }

    #[test]
    fn full_of_unexpired_entries_refuses_until_one_expires() {
        let mut c = Cache::with_capacity(2);
        for id in ["a", "b"] {
            assert!(matches!(c.lookup(id, [0; 32], t(10), t(0)), Lookup::New(_)));
            c.complete(id, ack(id));
        }
        assert!(matches!(c.lookup("c", [0; 32], t(10), t(1)), Lookup::Full));
        assert_eq!(c.len(), 2);
        assert!(matches!(
            c.lookup("c", [0; 32], t(30), t(10)),
            Lookup::New(_)
        ));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn an_entry_in_flight_is_kept_past_its_expiry() {
        let mut c = Cache::with_capacity(1);
        let _tx = c.lookup("a", [0; 32], t(10), t(0));
        assert!(matches!(c.lookup("b", [0; 32], t(30), t(20)), Lookup::Full));
        assert!(!c.is_empty());
    }
}
