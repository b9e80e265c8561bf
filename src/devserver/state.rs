//! The embedded control plane's task queue and worker table, and the dispatch rules.
//!
//! Plain data and synchronous methods: the HTTP and WebSocket layers lock it briefly, apply one
//! event, and send the frames it returns. Nothing here awaits.
//!
//! Split by concept, in layers so no file imports one that imports it back: the small records
//! live beside this file ([`TaskState`], [`StoredTranscript`], the execution record, the task
//! record, the worker rows); [`State`]'s tables are in `state/tables.rs`, and each way the state
//! changes (submit and retry, dispatch, worker connections, worker messages, cancellation,
//! client events, the saved view) is a file of `state/` that adds methods to it. This file only
//! names them, so `devserver::state::…` stays the one path callers use.

mod cancel;
mod client_events;
mod connections;
mod dispatch;
#[cfg(test)]
mod fixtures;
mod messages;
mod saved;
mod submit;
mod tables;

pub use super::stored_transcript::StoredTranscript;
pub use super::task::{ClientEvent, SubmitRequest, TaskRecord};
pub use super::task_state::TaskState;
pub use super::workers::{Handshake, Outgoing, RETRY_REJECTED_AFTER, WorkerRecord};
pub use cancel::{CancelError, CancelScope};
pub use client_events::{EventError, EventHeaders};
pub use saved::Saved;
pub use tables::State;
