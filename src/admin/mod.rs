//! The operator's surface on the host: the local HTTP API and its client, the status it
//! reports, and systemd's notify protocol.

pub mod api;
pub mod client;
pub mod history;
pub mod notify;
pub mod reloads;
pub mod shedding;
pub mod status;
