//! Everything that talks to the control plane: the WebSocket session, the outbound shipper
//! (transcript chunks and results, acked), TLS, and the environments catalog.

pub mod catalog;
pub mod session;
pub mod shipper;
pub mod tls;
