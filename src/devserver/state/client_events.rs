//! Setup-phase events a worker posts for a run (PROTOCOL §7), accepted only with the run's own
//! tokens.

use super::tables::State;
use crate::devserver::task::ClientEvent;

/// Why a posted client event was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// No such task.
    #[error("no such run")]
    NotFound,
    /// The headers do not carry the task's own tokens.
    #[error(
        "the Authorization bearer, X-Warp-Ambient-Workload-Token and X-Warp-Cloud-Agent-ID must be the run's WARP_API_KEY, WARP_WORKLOAD_TOKEN and id"
    )]
    Unauthorized,
}

/// The headers of a posted client event.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventHeaders<'a> {
    /// `Authorization: Bearer …`.
    pub bearer: Option<&'a str>,
    /// `X-Warp-Ambient-Workload-Token`.
    pub workload: Option<&'a str>,
    /// `X-Warp-Cloud-Agent-ID`.
    pub agent_id: Option<&'a str>,
}

impl State {
    /// Whether `headers` carry run `id`'s own `WARP_API_KEY`, `WARP_WORKLOAD_TOKEN` and id
    /// (setup events, and the identity token of task-log export).
    pub fn check_run_tokens(&self, id: &str, headers: EventHeaders<'_>) -> Result<(), EventError> {
        let t = self.tasks.get(id).ok_or(EventError::NotFound)?;
        let env = t.assignment.as_ref().and_then(|a| a.env_vars.as_ref());
        let var = |k: &str| env.and_then(|e| e.get(k)).map(String::as_str);
        let ok = headers.bearer.is_some()
            && headers.bearer == var("WARP_API_KEY")
            && headers.workload.is_some()
            && headers.workload == var("WARP_WORKLOAD_TOKEN")
            && headers.agent_id == Some(id);
        if ok {
            Ok(())
        } else {
            Err(EventError::Unauthorized)
        }
    }

    /// Stores a setup-phase event the worker posted for run `id`, checking that it carries
    /// the run's own tokens (as the Oz server would).
    pub fn client_event(
        &mut self,
        id: &str,
        headers: EventHeaders<'_>,
        event: ClientEvent,
    ) -> Result<(), EventError> {
        self.check_run_tokens(id, headers)?;
        let t = self.tasks.get_mut(id).ok_or(EventError::NotFound)?;
        t.events.push(event);
        self.version += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devserver::state::fixtures::req;
    use chrono::Utc;

    #[test]
    fn client_events_need_the_runs_own_tokens() {
        let now = Utc::now();
        let mut s = State::default();
        let mut r = req();
        r.env.insert("WARP_API_KEY".into(), "key-1".into());
        r.env.insert("WARP_WORKLOAD_TOKEN".into(), "wl-1".into());
        let (a, _) = s.submit(r, now);
        let ev = ClientEvent {
            event_uuid: "u".into(),
            event_name: "setup_worker_image_pull".into(),
            timestamp: now.to_rfc3339(),
            start_ts: now.to_rfc3339(),
            finish_ts: now.to_rfc3339(),
            latency_ms: 5,
            is_error: false,
        };
        let good = EventHeaders {
            bearer: Some("key-1"),
            workload: Some("wl-1"),
            agent_id: Some(&a.id),
        };
        for bad in [
            EventHeaders {
                bearer: Some("key-2"),
                ..good
            },
            EventHeaders {
                workload: None,
                ..good
            },
            EventHeaders {
                agent_id: Some("other"),
                ..good
            },
        ] {
            assert_eq!(
                s.client_event(&a.id, bad, ev.clone()),
                Err(EventError::Unauthorized)
            );
        }
        assert_eq!(
            s.client_event("nope", good, ev.clone()),
            Err(EventError::NotFound)
        );
        assert_eq!(s.client_event(&a.id, good, ev.clone()), Ok(()));
        assert_eq!(s.task(&a.id).map(|t| t.events.clone()), Some(vec![ev]));
    }
}
