//! berth: a self-hosted worker daemon that runs control-plane tasks in Docker containers.
//!
//! Read it top-down: `worker` wires everything; `control` talks to the control plane;
//! `supervisor` owns the task table; `task` runs one task through its phases against a
//! `backend` (the engine seam at the execution; `runtime` is the Docker engine's own seam
//! underneath the Docker backend); `spec` builds what to run (pure); `transcript` keeps what it printed; `archive`
//! answers debug-archive requests from the transcript; `admin` is the operator's surface. The leaves (`protocol`, `jsonstr`, `journal`, `failure`, `metrics`, `units`,
//! `secret`, `backoff`, `private`, `config`) import none of those. DESIGN.md has the picture.

pub mod admin;
pub mod archive;
pub mod backend;
pub mod backoff;
pub mod config;
pub mod control;
pub mod devserver;
pub mod egress;
pub mod failure;
pub mod journal;
pub mod jsonstr;
pub mod metrics;
pub mod private;
pub mod process;
pub mod protocol;
pub mod runtime;
pub mod secret;
pub mod spec;
pub mod supervisor;
pub mod task;
pub mod tasklogs;
pub mod transcript;
pub mod units;
pub mod worker;
