//! Configuration: the YAML file schema, defaults, validation, and the flag/env merge.
//!
//! One path for everything: raw file (strict, unknown keys rejected, positions kept) →
//! overrides from flags and environment → validated [`Config`]. `berth run` and
//! `berth check-config` call the same [`load`].
//!
//! Layered without cycles: `raw` (the schema) and `collector` (problems and their positions) at
//! the bottom, `overrides` on `raw`, one file per section of the file on those, then `load`
//! (the validated `Config`) and `effective` (what `check-config` prints) on top.

mod admission;
mod api;
mod api_key;
mod collector;
mod control_plane;
mod debug_log_capture;
mod docker;
mod effective;
mod environments;
mod kubernetes;
mod load;
mod log;
mod overrides;
mod policy;
mod raw;
mod task_logs;
#[cfg(test)]
mod test_support;
mod transcript;
mod worker;

pub use admission::AdmissionSettings;
pub use api::{ApiSettings, DEFAULT_API_LISTEN, Listen, parse_listen};
pub use collector::{ConfigError, ConfigErrors};
pub use control_plane::{ControlPlane, DEFAULT_SERVER_ROOT_URL, DEFAULT_URL};
pub use debug_log_capture::DebugLogCapture;
pub use docker::{DEFAULT_IMAGE, DockerBackend, parse_env_flag, validate_volume};
pub use effective::Effective;
pub use kubernetes::{
    BackendKind, ImagePullPolicy, KubernetesBackend, check_pod_template, valid_dns_label,
    valid_label_key, valid_label_value,
};
pub use load::{
    Config, DEFAULT_CONFIG_PATH, DEFAULT_MAX_CONCURRENT_TASKS, DEFAULT_SHUTDOWN_GRACE, load,
    load_str,
};
pub use log::valid_log_filter;
pub use overrides::Overrides;
pub use raw::{LogFormat, PullPolicy, ShutdownMode};
pub use task_logs::TaskLogSettings;
pub use transcript::{DEFAULT_ANCHOR_EVERY, DEFAULT_CAPTURE_DRAIN, TranscriptSettings};
pub use worker::DEFAULT_STATE_DIR;

pub use crate::units::{parse_duration, parse_size};
