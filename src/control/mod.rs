//! Everything that talks to the control plane: the WebSocket session, the outbound shipper
//! (transcript chunks and results, acked), TLS, the environments catalog, and setup-phase
//! events.

pub mod catalog;
pub mod session;
pub mod setup_events;
pub mod shipper;
pub mod tls;
