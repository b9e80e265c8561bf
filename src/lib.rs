//! berth: a self-hosted worker daemon that runs control-plane tasks in Docker containers.
//!
//! The crate is one library plus the `berth` binary; see DESIGN.md for the shape.

pub mod api;
pub mod backoff;
pub mod capacity;
pub mod capture;
pub mod catalog;
pub mod client;
pub mod config;
pub mod credentials;
pub mod devserver;
pub mod docker;
pub mod engine;
pub mod environment;
pub mod failure;
pub mod holder;
pub mod image;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod private;
pub mod progress;
pub mod protocol;
pub mod provision;
pub mod reconcile;
pub mod redaction;
pub mod rootfs;
pub mod session;
pub mod shipper;
pub mod spec;
pub mod spool;
pub mod status;
pub mod supervisor;
pub mod task;
pub mod tls;
pub mod transcript;
pub mod units;
pub mod worker;
