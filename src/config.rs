//! Configuration: the YAML file schema, defaults, validation, and the flag/env merge.
//!
//! One path for everything: raw file (strict, unknown keys rejected, positions kept) →
//! overrides from flags and environment → validated [`Config`]. `berth run` and
//! `berth check-config` call the same [`load`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// Default control-plane WebSocket (the Oz endpoint).
pub const DEFAULT_URL: &str = "wss://oz.warp.dev/api/v1/selfhosted/worker/ws";
/// Default root URL handed to the agent.
pub const DEFAULT_SERVER_ROOT_URL: &str = "https://app.warp.dev";
/// The Go worker's fallback image.
pub const DEFAULT_IMAGE: &str = "ubuntu:22.04";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";
/// Config file used by `berth run` when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.yaml";
/// Default concurrency.
pub const DEFAULT_MAX_CONCURRENT_TASKS: u32 = 4;
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_MAX_MESSAGE: u64 = 16 << 20;
const DEFAULT_TRANSCRIPT_MAX: u64 = 256 << 20;
const DEFAULT_TRANSCRIPT_TAIL: u64 = 16 << 20;
const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
// One default, kept by the spool that applies it.
use crate::secret::Secret;
use crate::transcript::spool::DEFAULT_FULL_DISK_PATIENCE;
const DEFAULT_MIN_FREE_DISK: u64 = 1 << 30;
const DEFAULT_ENVIRONMENTS_TTL: Duration = Duration::from_secs(300);
const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(15);

/// How images are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull on every task; a failed pull falls back to a local copy with a warning.
    Always,
    /// Pull only when the image is missing locally.
    IfNotPresent,
    /// Never pull; a missing image fails the task.
    Never,
}

/// What SIGTERM does to running tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownMode {
    /// Leave task containers running; a restarted worker re-attaches to them.
    Preserve,
    /// Stop every task container and report `graceful_shutdown`.
    Cancel,
}

/// Transcript capture settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptSettings {
    /// Per-execution budget of live transcript bytes.
    pub max_bytes: u64,
    /// Bytes of the end kept once the budget is reached.
    pub tail_bytes: u64,
    /// Literals replaced by `[REDACTED]` (besides env values and the API key).
    pub redact: Vec<Secret>,
    /// How long finished transcripts are kept locally.
    pub retention: Duration,
    /// How long output waits for space under `state_dir` before it is counted as lost.
    pub full_disk_patience: Duration,
    /// Live output bytes between resume anchors (0: never).
    pub anchor_every: u64,
    /// How long capture may go on reading the engine's log after the container stopped,
    /// besides `full_disk_patience`, before what it did not read is counted instead. Not a
    /// configuration key (always [`DEFAULT_CAPTURE_DRAIN`] from a file); tests shorten it.
    pub capture_drain: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (journald / log shippers).
    Json,
}

// ---- raw file schema -------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    worker_id: Option<Spanned<String>>,
    max_concurrent_tasks: Option<u32>,
    idle_on_complete: Option<Spanned<String>>,
    cleanup: Option<bool>,
    state_dir: Option<Spanned<String>>,
    control_plane: Option<RawControlPlane>,
    backend: Option<RawBackend>,
    labels: Option<BTreeMap<String, String>>,
    log: Option<RawLog>,
    api: Option<RawApi>,
    shutdown_mode: Option<ShutdownMode>,
    shutdown_grace: Option<Spanned<String>>,
    transcript: Option<RawTranscript>,
    admission: Option<RawAdmission>,
    environments: Option<BTreeMap<String, RawEnvironment>>,
    default_environment: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    image: Option<Spanned<String>>,
    env: Option<BTreeMap<String, String>>,
    workdir: Option<Spanned<String>>,
    repos: Option<Spanned<Vec<crate::spec::environment::Repo>>>,
    setup: Option<Spanned<Vec<String>>>,
    resources: Option<RawResources>,
    runtime: Option<String>,
    egress: Option<Spanned<serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<Spanned<String>>,
    socket_group: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmission {
    reserve: Option<RawResources>,
    min_free_disk: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTranscript {
    max_bytes: Option<Spanned<String>>,
    tail_bytes: Option<Spanned<String>>,
    redact: Option<Vec<String>>,
    retention: Option<Spanned<String>>,
    full_disk_patience: Option<Spanned<String>>,
    anchor_every: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControlPlane {
    url: Option<Spanned<String>>,
    server_root_url: Option<Spanned<String>>,
    api_key_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    client_cert_file: Option<Spanned<String>>,
    client_key_file: Option<Spanned<String>>,
    allow_insecure: Option<bool>,
    heartbeat_interval: Option<Spanned<String>>,
    max_message_size: Option<Spanned<String>>,
    session_sharing_server_url: Option<Spanned<String>>,
    environments_url: Option<Spanned<String>>,
    environments_ttl: Option<Spanned<String>>,
    status_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    docker: Option<RawDocker>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    host: Option<Spanned<String>>,
    default_image: Option<Spanned<String>>,
    pull_policy: Option<PullPolicy>,
    volumes: Option<Vec<Spanned<String>>>,
    environment: Option<Vec<RawEnvEntry>>,
    stop_grace_period: Option<Spanned<String>>,
    policy: Option<RawPolicy>,
    auth_config: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allowed_images: Option<Vec<Spanned<String>>>,
    egress: Option<RawEgress>,
    security: Option<RawSecurity>,
    default_resources: Option<RawResources>,
    max_resources: Option<RawResources>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    mode: Option<Spanned<String>>,
    allow: Option<Vec<Spanned<String>>>,
    proxy_port: Option<Spanned<u16>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    no_new_privileges: Option<bool>,
    cap_drop: Option<Vec<Spanned<String>>>,
    cap_add: Option<Vec<Spanned<String>>>,
    pids_limit: Option<i64>,
    read_only_rootfs: Option<bool>,
    user: Option<String>,
    runtime: Option<Spanned<String>>,
    allowed_runtimes: Option<Vec<Spanned<String>>>,
    network: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpus: Option<Spanned<f64>>,
    memory: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvEntry {
    name: Spanned<String>,
    value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<Spanned<String>>,
    format: Option<LogFormat>,
}

// ---- validated config ------------------------------------------------------------------------

/// Control-plane connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlane {
    /// WebSocket URL (`worker_id` is added when dialling).
    pub url: url::Url,
    /// Root URL handed to the agent.
    pub server_root_url: String,
    /// Bearer API key.
    pub api_key: Secret,
    /// Where the key came from (for `check-config`).
    pub api_key_source: String,
    /// Extra CA bundle (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mTLS (PEM).
    pub client_cert_file: Option<PathBuf>,
    /// Client key for mTLS (PEM).
    pub client_key_file: Option<PathBuf>,
    /// Allow `ws://` to non-loopback hosts.
    pub allow_insecure: bool,
    /// Ping interval; the link is dead after twice this much silence.
    pub heartbeat_interval: Duration,
    /// Largest inbound message.
    pub max_message_size: u64,
    /// `--session-sharing-server-url` for the agent.
    pub session_sharing_server_url: Option<String>,
    /// Template (`…/{id}`) of the environments API; `None` = environments are not fetched.
    pub environments_url: Option<String>,
    /// How long a fetched environment is used before it is revalidated.
    pub environments_ttl: Duration,
    /// Period of `worker_status` (berth/1).
    pub status_interval: Duration,
}

/// Docker backend settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerBackend {
    /// Engine address (`unix://…`, `tcp://…`); `None` = `DOCKER_HOST` or the default socket.
    pub host: Option<String>,
    /// Image when the assignment names none.
    pub default_image: String,
    pub pull_policy: PullPolicy,
    /// Operator binds (config entries, then `-v` flags).
    pub volumes: Vec<String>,
    /// Operator env (config entries, then `-e` flags), host values resolved.
    pub environment: Vec<(String, String)>,
    /// Time between SIGTERM and SIGKILL when stopping a task.
    pub stop_grace_period: Duration,
    /// What tasks may run and do.
    pub policy: crate::spec::policy::Policy,
    /// Docker CLI config file with registry credentials (`auths`); `None` = the service
    /// user's `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub auth_config: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the file came from, if any.
    pub source: Option<PathBuf>,
    /// This worker's id.
    pub worker_id: String,
    /// Concurrency slots; 0 = unlimited.
    pub max_concurrent_tasks: u32,
    /// Operator default for `--idle-on-complete`.
    pub idle_on_complete: Option<String>,
    /// Remove containers after they exit.
    pub cleanup: bool,
    /// Durable state directory.
    pub state_dir: PathBuf,
    pub control_plane: ControlPlane,
    /// Docker backend.
    pub docker: DockerBackend,
    /// Free-form labels reported to the server.
    pub labels: BTreeMap<String, String>,
    /// Log level / filter directive.
    pub log_level: String,
    pub log_format: LogFormat,
    /// What SIGTERM does to running tasks.
    pub shutdown_mode: ShutdownMode,
    /// How long shutdown waits, once no task runs, for the last results and transcript bytes
    /// to reach the control plane (they stay in the journal either way).
    pub shutdown_grace: Duration,
    /// Transcript capture.
    pub transcript: TranscriptSettings,
    /// Resource-aware admission.
    pub admission: AdmissionSettings,
    /// Named environments, selected by `agent_config_snapshot.environment_id`.
    pub environments: BTreeMap<String, crate::spec::environment::Environment>,
    /// Environment used when a task names none (or an unknown one).
    pub default_environment: Option<String>,
    /// The local API.
    pub api: ApiSettings,
}

/// Where the local API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (mutating requests need the admin token).
    Tcp(std::net::SocketAddr),
    /// A Unix socket (mode 0660; every request is trusted).
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Parses `api.listen`: `host:port`, an absolute socket path, or `off`.
pub fn parse_listen(s: &str) -> Result<Option<Listen>, String> {
    let s = s.trim();
    if s == "off" {
        return Ok(None);
    }
    if s.starts_with('/') {
        return Ok(Some(Listen::Unix(PathBuf::from(s))));
    }
    s.parse()
        .map(|a| Some(Listen::Tcp(a)))
        .map_err(|_| format!("{s:?} is neither host:port, an absolute socket path, nor off"))
}

/// Local API settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// `None` = no local API.
    pub listen: Option<Listen>,
    /// Group owning the Unix socket (mode 0660).
    pub socket_group: Option<String>,
}

/// Default `api.listen`.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:9464";

/// Resource-aware admission settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionSettings {
    /// CPU and memory held back for the host itself.
    pub reserve: crate::spec::policy::Resources,
    /// Tasks are rejected while `state_dir` or Docker's data dir has less free space.
    pub min_free_disk: u64,
}

/// Values from flags and environment variables, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--worker-id`.
    pub worker_id: Option<String>,
    /// `--api-listen`.
    pub api_listen: Option<String>,
    /// `--api-key` / `BERTH_API_KEY` / `WARP_API_KEY`.
    pub api_key: Option<Secret>,
    /// `--api-key-file`.
    pub api_key_file: Option<PathBuf>,
    /// `--control-plane-url` / `BERTH_CONTROL_PLANE_URL`.
    pub control_plane_url: Option<String>,
    /// `--server-root-url`.
    pub server_root_url: Option<String>,
    /// `--max-concurrent-tasks`.
    pub max_concurrent_tasks: Option<u32>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `-e KEY[=VALUE]`.
    pub env: Vec<String>,
    /// `-v HOST:CONTAINER[:MODE]`.
    pub volumes: Vec<String>,
    /// `--no-cleanup`.
    pub no_cleanup: bool,
    /// `--idle-on-complete`.
    pub idle_on_complete: Option<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), read for `api-key`.
    pub credentials_directory: Option<PathBuf>,
    /// `--shutdown-mode`.
    pub shutdown_mode: Option<ShutdownMode>,
    /// No API key anywhere is not an error (`check-config`: under the unit the key arrives as a
    /// credential only `berth run` sees); a key source that is set but unreadable still is.
    pub api_key_optional: bool,
}

/// One configuration problem: which key, where, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Dotted key, e.g. `control_plane.url`, or `-` for file-level problems.
    pub key: String,
    /// File and 1-based line/column when the problem is in the file.
    pub location: Option<(PathBuf, u64, u64)>,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((p, line, col)) = &self.location {
            write!(f, "{}:{line}:{col}: ", p.display())?;
        }
        write!(f, "{}: {}", self.key, self.problem)?;
        if !self.fix.is_empty() {
            write!(f, "\n    fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// Every problem found in one load.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

struct Collector<'a> {
    file: Option<&'a Path>,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn at<T>(&mut self, key: &str, spanned: Option<&Spanned<T>>, problem: String, fix: &str) {
        let location = match (self.file, spanned) {
            (Some(p), Some(s)) => {
                Some((p.to_path_buf(), s.referenced.line(), s.referenced.column()))
            }
            _ => None,
        };
        self.errors.push(ConfigError {
            key: key.to_string(),
            location,
            problem,
            fix: fix.to_string(),
        });
    }

    /// The duration at `key`, `default` when absent; an unparsable one is reported (with
    /// `fix`) and replaced by `default` so every other error is still collected.
    fn duration(
        &mut self,
        key: &str,
        sp: Option<&Spanned<String>>,
        default: Duration,
        fix: &str,
    ) -> Duration {
        self.duration_min(key, sp, default, Duration::ZERO, fix)
    }

    /// A duration of at least `min` at `key`; `fix` says how to write one.
    fn duration_min(
        &mut self,
        key: &str,
        sp: Option<&Spanned<String>>,
        default: Duration,
        min: Duration,
        fix: &str,
    ) -> Duration {
        match sp.map(|sp| (sp, parse_duration(&sp.value))) {
            None => default,
            Some((_, Ok(d))) if d >= min => d,
            Some((sp, Ok(_))) => {
                let problem = format!(
                    "{:?} is shorter than the minimum {}",
                    sp.value,
                    humantime::format_duration(min)
                );
                self.at(key, Some(sp), problem, "use a longer duration");
                default
            }
            Some((sp, Err(p))) => {
                self.at(key, Some(sp), p, fix);
                default
            }
        }
    }

    /// A size of at least `min` bytes at `key`; `fix` says how to write one.
    fn size_min(
        &mut self,
        key: &str,
        sp: Option<&Spanned<String>>,
        default: u64,
        min: u64,
        fix: &str,
    ) -> u64 {
        match sp.map(|sp| (sp, parse_size(&sp.value))) {
            None => default,
            Some((_, Ok(n))) if n >= min => n,
            Some((sp, Ok(_))) => {
                let problem = format!("{:?} is below the minimum of {min} bytes", sp.value);
                self.at(key, Some(sp), problem, "use a larger size");
                default
            }
            Some((sp, Err(p))) => {
                self.at(key, Some(sp), p, fix);
                default
            }
        }
    }
}

pub use crate::units::{parse_duration, parse_size};

/// Validates a `HOST:CONTAINER[:MODE]` bind.
pub fn validate_volume(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (host, container, mode) = match parts.as_slice() {
        [h, c] => (*h, *c, None),
        [h, c, m] => (*h, *c, Some(*m)),
        _ => {
            return Err(format!(
                "{v:?} is not HOST:CONTAINER[:MODE] (e.g. /srv/cache:/cache:ro)"
            ));
        }
    };
    if host.is_empty() {
        return Err(format!("{v:?} has an empty host path or volume name"));
    }
    if !host.starts_with('/')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "{v:?}: host side must be an absolute path or a volume name"
        ));
    }
    if !container.starts_with('/') {
        return Err(format!("{v:?}: container path must be absolute"));
    }
    if let Some(m) = mode {
        let ok = !m.is_empty()
            && m.split(',').all(|o| {
                matches!(
                    o,
                    "ro" | "rw"
                        | "z"
                        | "Z"
                        | "nocopy"
                        | "shared"
                        | "rshared"
                        | "slave"
                        | "rslave"
                        | "private"
                        | "rprivate"
                )
            });
        if !ok {
            return Err(format!(
                "{v:?}: mode {m:?} is not one of ro, rw, z, Z, nocopy or a propagation mode"
            ));
        }
    }
    Ok(())
}

/// Splits `-e KEY[=VALUE]`; a bare `KEY` copies the host's value (empty if unset).
pub fn parse_env_flag(
    flag: &str,
    host: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), String> {
    let (k, v) = match flag.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (flag.to_string(), host(flag).unwrap_or_default()),
    };
    if k.is_empty() || k.contains('\0') {
        return Err(format!(
            "{flag:?} has no variable name (use KEY=VALUE or KEY)"
        ));
    }
    Ok((k, v))
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn valid_worker_id(id: &str) -> Result<(), (String, &'static str)> {
    if id.is_empty() {
        return Err((
            "worker_id is empty".into(),
            "set worker_id to a name unique in your fleet, e.g. the host name",
        ));
    }
    if id.to_ascii_lowercase().starts_with("warp") {
        return Err((
            format!("worker_id {id:?} starts with \"warp\", which is reserved"),
            "choose an id that does not start with \"warp\"",
        ));
    }
    if id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err((
            format!("worker_id {id:?} is invalid"),
            "use at most 128 letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

/// serde-saphyr's message without its redundant "error: line N column M:" prefix, with the
/// source snippet kept and pointed at the real file.
fn yaml_problem(rendered: &str, path: &Path) -> String {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.split_once(": ") {
        Some((pos, rest)) if pos.starts_with("line ") => rest,
        _ => first,
    };
    let snippet: Vec<String> = lines
        .map(|l| l.replace("<input>", &path.display().to_string()))
        .collect();
    if snippet.is_empty() {
        first.to_string()
    } else {
        format!("{first}\n{}", snippet.join("\n"))
    }
}

fn resources_of(
    key: &str,
    r: Option<RawResources>,
    c: &mut Collector<'_>,
) -> crate::spec::policy::Resources {
    let r = r.unwrap_or_default();
    let cpus = r.cpus.and_then(|sp| {
        if sp.value > 0.0 && sp.value.is_finite() {
            Some(sp.value)
        } else {
            c.at(
                &format!("{key}.cpus"),
                Some(&sp),
                format!("{} is not a positive number of CPUs", sp.value),
                "use e.g. 2 or 0.5",
            );
            None
        }
    });
    let memory = r.memory.and_then(|sp| match parse_size(&sp.value) {
        Ok(n) if n >= 4 << 20 => Some(n),
        Ok(_) => {
            c.at(
                &format!("{key}.memory"),
                Some(&sp),
                format!("{:?} is below Docker's minimum of 6MiB", sp.value),
                "use e.g. 512MiB or 8GiB",
            );
            None
        }
        Err(p) => {
            c.at(
                &format!("{key}.memory"),
                Some(&sp),
                p,
                "use e.g. 512MiB or 8GiB",
            );
            None
        }
    });
    crate::spec::policy::Resources { cpus, memory }
}

fn policy_of(raw: RawPolicy, c: &mut Collector<'_>) -> crate::spec::policy::Policy {
    use crate::spec::policy::{Policy, Security};
    let d = Policy::default();
    let mut allowed = Vec::new();
    for p in raw.allowed_images.unwrap_or_default() {
        if p.value.trim().is_empty() || p.value.contains(char::is_whitespace) {
            c.at("backend.docker.policy.allowed_images", Some(&p), format!("{:?} is not an image pattern", p.value), "write patterns over normalised references, e.g. registry.example.com/** or docker.io/library/ubuntu:*");
        }
        allowed.push(p.value);
    }
    let sec = raw.security.unwrap_or_default();
    let caps =
        |key: &str, list: Option<Vec<Spanned<String>>>, c: &mut Collector<'_>| -> Vec<String> {
            let mut out = Vec::new();
            for cap in list.unwrap_or_default() {
                let ok = !cap.value.is_empty()
                    && cap
                        .value
                        .chars()
                        .all(|ch| ch.is_ascii_uppercase() || ch == '_');
                if !ok {
                    c.at(
                        key,
                        Some(&cap),
                        format!("{:?} is not a capability name", cap.value),
                        "use names like NET_RAW, SYS_ADMIN or ALL",
                    );
                }
                out.push(cap.value);
            }
            out
        };
    // Runtime names go to the engine verbatim: keep them plain names.
    let runtime_name = |key: &str, r: Spanned<String>, c: &mut Collector<'_>| -> String {
        let ok = !r.value.is_empty()
            && r.value
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
        if !ok {
            c.at(
                key,
                Some(&r),
                format!("{:?} is not an OCI runtime name", r.value),
                "use the name the runtime is registered under in /etc/docker/daemon.json, e.g. runsc",
            );
        }
        r.value
    };
    let runtime = sec
        .runtime
        .filter(|r| !r.value.is_empty())
        .map(|r| runtime_name("backend.docker.policy.security.runtime", r, c));
    let allowed_runtimes: Vec<String> = sec
        .allowed_runtimes
        .unwrap_or_default()
        .into_iter()
        .map(|r| runtime_name("backend.docker.policy.security.allowed_runtimes", r, c))
        .collect();
    let cap_drop = caps("backend.docker.policy.security.cap_drop", sec.cap_drop, c);
    let cap_add = caps("backend.docker.policy.security.cap_add", sec.cap_add, c);
    let network = match sec.network {
        None => d.security.network.clone(),
        Some(n) => {
            if n.value == "host" {
                c.at(
                    "backend.docker.policy.security.network",
                    Some(&n),
                    "network \"host\" would give tasks the host's network stack".into(),
                    "use bridge, none, or a named Docker network",
                );
            }
            n.value
        }
    };
    let timeout = match raw.timeout {
        None => d.timeout,
        Some(sp) => match parse_duration(&sp.value) {
            Ok(t) => t,
            Err(p) => {
                c.at(
                    "backend.docker.policy.timeout",
                    Some(&sp),
                    p,
                    "use a duration such as 2h, or 0s for no limit",
                );
                d.timeout
            }
        },
    };
    let default_resources = resources_of(
        "backend.docker.policy.default_resources",
        raw.default_resources,
        c,
    );
    let max_resources = resources_of("backend.docker.policy.max_resources", raw.max_resources, c);
    let (egress, egress_proxy_port) = egress_of(raw.egress.unwrap_or_default(), c);
    let profile = match sec.profile {
        None => crate::spec::policy::Profile::Default,
        Some(p) => match p.value.as_str() {
            "default" => crate::spec::policy::Profile::Default,
            "strict" => crate::spec::policy::Profile::Strict,
            other => {
                c.at(
                    "backend.docker.policy.security.profile",
                    Some(&p),
                    format!("{other:?} is not a security profile"),
                    "use default (the settings as configured) or strict",
                );
                crate::spec::policy::Profile::Default
            }
        },
    };
    Policy {
        allowed_images: allowed,
        security: Security {
            no_new_privileges: sec.no_new_privileges.unwrap_or(true),
            cap_drop,
            cap_add,
            pids_limit: match sec.pids_limit {
                None => d.security.pids_limit,
                Some(n) if n > 0 => Some(n),
                Some(_) => None,
            },
            read_only_rootfs: sec.read_only_rootfs.unwrap_or(false),
            user: sec.user.filter(|u| !u.is_empty()),
            runtime,
            network,
            tmpfs: Vec::new(),
        },
        default_resources,
        max_resources,
        timeout,
        allowed_runtimes,
        egress,
        egress_proxy_port,
        profile,
    }
}

fn egress_of(raw: RawEgress, c: &mut Collector<'_>) -> (crate::spec::egress::Egress, u16) {
    use crate::spec::egress::{Allow, Egress, Mode};
    let mode = match raw.mode {
        None => Mode::Open,
        Some(m) => Mode::parse(&m.value).unwrap_or_else(|| {
            c.at(
                "backend.docker.policy.egress.mode",
                Some(&m),
                format!("{:?} is not an egress mode", m.value),
                "use open (no restriction), allowlist (only the allow list, through berth's proxy) or none (no network)",
            );
            Mode::Open
        }),
    };
    let mut allow = Vec::new();
    for e in raw.allow.unwrap_or_default() {
        match Allow::parse(&e.value) {
            Ok(a) => allow.push(a),
            Err(problem) => c.at(
                "backend.docker.policy.egress.allow",
                Some(&e),
                problem,
                "write host, host:port, *.domain[:port], an IP or a CIDR such as 10.0.0.0/8",
            ),
        }
    }
    let port = match raw.proxy_port {
        None => crate::spec::policy::DEFAULT_EGRESS_PROXY_PORT,
        Some(p) if p.value > 0 => p.value,
        Some(p) => {
            c.at(
                "backend.docker.policy.egress.proxy_port",
                Some(&p),
                "port 0 is not a port".into(),
                "use a free TCP port such as 3128",
            );
            crate::spec::policy::DEFAULT_EGRESS_PROXY_PORT
        }
    };
    (
        Egress {
            mode,
            allow,
            narrowed: None,
        },
        port,
    )
}

/// A level (`info`) or comma-separated directives (`info,berth=debug,hyper=warn`).
pub fn valid_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let level_ok = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    !s.trim().is_empty()
        && s.split(',').all(|d| match d.trim().split_once('=') {
            Some((target, level)) => {
                !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'))
                    && level_ok(level)
            }
            None => level_ok(d.trim()),
        })
}

/// Reads the YAML file (if any), applies overrides and validates. `host_env` looks up host
/// environment variables (passed in so tests never touch the process environment).
pub fn load(
    path: Option<&Path>,
    overrides: &Overrides,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let text = match path {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: "-".into(),
                location: None,
                problem: format!("cannot read config file {}: {e}", p.display()),
                fix: "check the path given to --config and that the berth user may read it".into(),
            }])
        })?),
        None => None,
    };
    load_str(text.as_deref(), path, overrides, host_env)
}

/// Like [`load`], from text already read (`path` is used in messages only).
pub fn load_str(
    text: Option<&str>,
    path: Option<&Path>,
    ov: &Overrides,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let display_path = path.unwrap_or(Path::new("<config>"));
    let mut raw: RawConfig = match text {
        None => RawConfig::default(),
        Some(t) => {
            let opts = serde_saphyr::options! { strict_booleans: true };
            match serde_saphyr::from_str_with_options::<Option<RawConfig>>(t, opts) {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => {
                    let location = e
                        .location()
                        .map(|l| (display_path.to_path_buf(), l.line(), l.column()));
                    return Err(ConfigErrors(vec![ConfigError {
                        key: "yaml".into(),
                        location,
                        problem: yaml_problem(&e.to_string(), display_path),
                        fix: "correct the file at that position; config.example.yaml documents every key and its format".into(),
                    }]));
                }
            }
        }
    };
    let mut c = Collector {
        file: path,
        errors: Vec::new(),
    };
    let cp = raw.control_plane.take().unwrap_or_default();
    let docker = raw
        .backend
        .take()
        .unwrap_or_default()
        .docker
        .unwrap_or_default();
    let raw_api = raw.api.take().unwrap_or_default();
    let api = api_section(raw_api, ov, &mut c);
    let log = raw.log.take().unwrap_or_default();
    let worker_id = worker_id_of(ov, &raw, &mut c);
    let control_plane = control_plane_section(cp, ov, &mut c);
    let idle_on_complete = idle_on_complete_of(ov, &raw, &mut c);
    let state_dir = state_dir_of(ov, &raw, &mut c);
    let docker = docker_section(docker, ov, host_env, &mut c);
    let log_level = log_level_of(ov, &log, &mut c);
    let admission = admission_section(raw.admission.take(), &mut c);
    let (environments, default_environment) = environments_section(&mut raw, &mut c);
    let transcript = transcript_section(raw.transcript.take(), &mut c);
    let shutdown_grace = c.duration(
        "shutdown_grace",
        raw.shutdown_grace.as_ref(),
        DEFAULT_SHUTDOWN_GRACE,
        "use a duration such as 10s",
    );

    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    let Some(control_plane) = control_plane else {
        return Err(ConfigErrors(c.errors));
    };
    Ok(Config {
        source: path.map(Path::to_path_buf),
        worker_id,
        max_concurrent_tasks: ov
            .max_concurrent_tasks
            .or(raw.max_concurrent_tasks)
            .unwrap_or(DEFAULT_MAX_CONCURRENT_TASKS),
        idle_on_complete,
        cleanup: !ov.no_cleanup && raw.cleanup.unwrap_or(true),
        state_dir,
        control_plane,
        docker,
        labels: raw.labels.unwrap_or_default(),
        log_level,
        log_format: ov.log_format.or(log.format).unwrap_or(LogFormat::Text),
        shutdown_mode: ov
            .shutdown_mode
            .or(raw.shutdown_mode)
            .unwrap_or(ShutdownMode::Preserve),
        shutdown_grace,
        transcript,
        admission,
        environments,
        default_environment,
        api,
    })
}

// ---- sections: one function per part of the file, each key one call on the collector ------

fn api_section(raw_api: RawApi, ov: &Overrides, c: &mut Collector<'_>) -> ApiSettings {
    ApiSettings {
        listen: match ov.api_listen.as_deref() {
            Some(flag) => parse_listen(flag).unwrap_or_else(|p| {
                c.at::<String>(
                    "api.listen",
                    None,
                    format!("--api-listen: {p}"),
                    "use e.g. 127.0.0.1:9464, /run/berth/api.sock or off",
                );
                None
            }),
            None => match &raw_api.listen {
                None => parse_listen(DEFAULT_API_LISTEN).unwrap_or(None),
                Some(sp) => parse_listen(&sp.value).unwrap_or_else(|p| {
                    c.at(
                        "api.listen",
                        Some(sp),
                        p,
                        "use e.g. 127.0.0.1:9464, /run/berth/api.sock or off",
                    );
                    None
                }),
            },
        },
        socket_group: raw_api.socket_group.map(|g| {
            if g.value.trim().is_empty() || g.value.contains(char::is_whitespace) {
                c.at(
                    "api.socket_group",
                    Some(&g),
                    format!("{:?} is not a group name", g.value),
                    "use a group such as berth-admin, or remove the key",
                );
            }
            g.value
        }),
    }
}

fn worker_id_of(ov: &Overrides, raw: &RawConfig, c: &mut Collector<'_>) -> String {
    match (&ov.worker_id, &raw.worker_id) {
        (Some(id), _) => {
            if let Err((p, fix)) = valid_worker_id(id) {
                c.at::<String>("--worker-id", None, p, fix);
            }
            id.clone()
        }
        (None, Some(s)) => {
            if let Err((p, fix)) = valid_worker_id(&s.value) {
                c.at("worker_id", Some(s), p, fix);
            }
            s.value.clone()
        }
        (None, None) => {
            c.at::<String>(
                "worker_id",
                None,
                "worker_id is required".into(),
                "add `worker_id: <name>` to the config file or pass --worker-id",
            );
            String::new()
        }
    }
}

/// `control_plane.*` (with the flags that override it); `None` when the URL is unusable.
fn control_plane_section(
    cp: RawControlPlane,
    ov: &Overrides,
    c: &mut Collector<'_>,
) -> Option<ControlPlane> {
    // control plane url
    let url_text = ov
        .control_plane_url
        .clone()
        .or_else(|| cp.url.as_ref().map(|s| s.value.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let url_key = if ov.control_plane_url.is_some() {
        "--control-plane-url"
    } else {
        "control_plane.url"
    };
    let url_span = if ov.control_plane_url.is_some() {
        None
    } else {
        cp.url.as_ref()
    };
    let allow_insecure = cp.allow_insecure.unwrap_or(false);
    let url = match url::Url::parse(&url_text) {
        Ok(u) => {
            match u.scheme() {
                "wss" => {}
                "ws" if allow_insecure || is_loopback_host(&u) => {}
                "ws" => c.at(
                    url_key,
                    url_span,
                    format!("plain ws:// to non-loopback host in {url_text:?} would send the API key unencrypted"),
                    "use wss://, or set control_plane.allow_insecure: true if the network is trusted",
                ),
                other => c.at(
                    url_key,
                    url_span,
                    format!("scheme {other:?} in {url_text:?} is not a WebSocket URL"),
                    "use wss://host/path (or ws:// for a loopback test server)",
                ),
            }
            Some(u)
        }
        Err(e) => {
            c.at(
                url_key,
                url_span,
                format!("{url_text:?} is not a URL: {e}"),
                "use e.g. wss://oz.warp.dev/api/v1/selfhosted/worker/ws",
            );
            None
        }
    };

    let environments_url = cp.environments_url.as_ref().map(|sp| {
        let t = sp.value.trim().to_string();
        match url::Url::parse(&t.replace("{id}", "x")) {
            Ok(_) if !t.contains("{id}") => c.at(
                "control_plane.environments_url",
                Some(sp),
                format!("{t:?} has no {{id}} placeholder"),
                "write where the environment id goes, e.g. https://cp.example.com/api/v1/environments/{id}",
            ),
            Ok(u) => match u.scheme() {
                "https" => {}
                "http" if allow_insecure || is_loopback_host(&u) => {}
                "http" => c.at(
                    "control_plane.environments_url",
                    Some(sp),
                    format!("plain http:// to a non-loopback host in {t:?} would send the API key unencrypted"),
                    "use https://, or set control_plane.allow_insecure: true if the network is trusted",
                ),
                other => c.at(
                    "control_plane.environments_url",
                    Some(sp),
                    format!("scheme {other:?} in {t:?} is not HTTP"),
                    "use https://host/path/{id}",
                ),
            },
            Err(e) => c.at(
                "control_plane.environments_url",
                Some(sp),
                format!("{t:?} is not a URL: {e}"),
                "use e.g. https://cp.example.com/api/v1/environments/{id}",
            ),
        }
        t
    });
    let status_interval = c.duration_min(
        "control_plane.status_interval",
        cp.status_interval.as_ref(),
        DEFAULT_STATUS_INTERVAL,
        Duration::from_secs(1),
        "use a duration such as 15s",
    );
    let environments_ttl = c.duration(
        "control_plane.environments_ttl",
        cp.environments_ttl.as_ref(),
        DEFAULT_ENVIRONMENTS_TTL,
        "use a duration such as 5m, or 0s to revalidate on every task",
    );

    let server_root_url = ov
        .server_root_url
        .clone()
        .or_else(|| cp.server_root_url.as_ref().map(|s| s.value.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER_ROOT_URL.to_string());
    if !server_root_url.is_empty() && url::Url::parse(&server_root_url).is_err() {
        c.at(
            "control_plane.server_root_url",
            cp.server_root_url.as_ref(),
            format!("{server_root_url:?} is not a URL"),
            "use e.g. https://app.warp.dev, or \"\" to pass none",
        );
    }

    // API key: flag/env > --api-key-file > config api_key_file > systemd credential.
    let cred_file = ov.credentials_directory.as_ref().map(|d| d.join("api-key"));
    let key_file: Option<(PathBuf, &str, Option<&Spanned<String>>)> = if ov.api_key.is_some() {
        None
    } else if let Some(p) = &ov.api_key_file {
        Some((p.clone(), "--api-key-file", None))
    } else if let Some(s) = &cp.api_key_file {
        Some((
            PathBuf::from(&s.value),
            "control_plane.api_key_file",
            Some(s),
        ))
    } else {
        cred_file
            .filter(|p| p.exists())
            .map(|p| (p, "$CREDENTIALS_DIRECTORY/api-key", None))
    };
    let (api_key, api_key_source) = match (&ov.api_key, key_file) {
        (Some(k), _) => (
            k.clone(),
            "--api-key / BERTH_API_KEY / WARP_API_KEY".to_string(),
        ),
        (None, Some((p, key, span))) => match std::fs::read_to_string(&p) {
            Ok(s) if !s.trim().is_empty() => {
                (Secret::new(s.trim()), format!("file {}", p.display()))
            }
            Ok(_) => {
                c.at(
                    key,
                    span,
                    format!("API key file {} is empty", p.display()),
                    "write the key into the file (one line)",
                );
                (Secret::new(""), String::new())
            }
            Err(e) => {
                c.at(
                    key,
                    span,
                    format!("cannot read API key file {}: {e}", p.display()),
                    "check the path and that the berth user may read it (mode 0600, owned by berth)",
                );
                (Secret::new(""), String::new())
            }
        },
        (None, None) if ov.api_key_optional => (Secret::new(""), String::new()),
        (None, None) => {
            c.at::<String>(
                "control_plane.api_key_file",
                None,
                "no API key configured".into(),
                "set control_plane.api_key_file, pass --api-key-file, set BERTH_API_KEY, or use systemd LoadCredential=api-key:…",
            );
            (Secret::new(""), String::new())
        }
    };

    let path_opt = |s: &Option<Spanned<String>>| s.as_ref().map(|s| PathBuf::from(&s.value));
    let ca_file = path_opt(&cp.ca_file);
    let client_cert_file = path_opt(&cp.client_cert_file);
    let client_key_file = path_opt(&cp.client_key_file);
    for (key, spanned) in [
        ("control_plane.ca_file", &cp.ca_file),
        ("control_plane.client_cert_file", &cp.client_cert_file),
        ("control_plane.client_key_file", &cp.client_key_file),
    ] {
        if let Some(s) = spanned
            && let Err(e) = std::fs::metadata(&s.value)
        {
            c.at(
                key,
                Some(s),
                format!("cannot read {}: {e}", s.value),
                "point it at a readable PEM file",
            );
        }
    }
    if client_cert_file.is_some() != client_key_file.is_some() {
        c.at::<String>(
            "control_plane.client_cert_file",
            cp.client_cert_file.as_ref().or(cp.client_key_file.as_ref()),
            "client_cert_file and client_key_file must be set together".into(),
            "set both for mTLS, or neither",
        );
    }

    let heartbeat_interval = c.duration_min(
        "control_plane.heartbeat_interval",
        cp.heartbeat_interval.as_ref(),
        DEFAULT_HEARTBEAT,
        Duration::from_secs(1),
        "use a duration such as 30s, 5m or 1h30m",
    );
    let max_message_size = match &cp.max_message_size {
        None => DEFAULT_MAX_MESSAGE,
        Some(s) => match parse_size(&s.value) {
            Ok(n) if (64 << 10..=1 << 30).contains(&n) => n,
            Ok(n) => {
                c.at(
                    "control_plane.max_message_size",
                    Some(s),
                    format!("{n} bytes is outside 64KiB..1GiB"),
                    "use a value such as 16MiB",
                );
                DEFAULT_MAX_MESSAGE
            }
            Err(p) => {
                c.at(
                    "control_plane.max_message_size",
                    Some(s),
                    p,
                    "use e.g. 16MiB",
                );
                DEFAULT_MAX_MESSAGE
            }
        },
    };
    Some(ControlPlane {
        url: url?,
        server_root_url,
        api_key,
        api_key_source,
        ca_file,
        client_cert_file,
        client_key_file,
        allow_insecure,
        heartbeat_interval,
        max_message_size,
        session_sharing_server_url: cp.session_sharing_server_url.map(|s| s.value),
        environments_url,
        environments_ttl,
        status_interval,
    })
}

fn idle_on_complete_of(ov: &Overrides, raw: &RawConfig, c: &mut Collector<'_>) -> Option<String> {
    match (&ov.idle_on_complete, &raw.idle_on_complete) {
        (Some(v), _) => {
            if let Err(p) = parse_duration(v) {
                c.at::<String>("--idle-on-complete", None, p, "use a duration such as 10m");
            }
            Some(v.trim().to_string())
        }
        (None, Some(s)) => {
            if let Err(p) = parse_duration(&s.value) {
                c.at("idle_on_complete", Some(s), p, "use a duration such as 10m");
            }
            Some(s.value.trim().to_string())
        }
        (None, None) => None,
    }
}

fn state_dir_of(ov: &Overrides, raw: &RawConfig, c: &mut Collector<'_>) -> PathBuf {
    match (&ov.state_dir, &raw.state_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => {
            if !s.value.starts_with('/') {
                c.at(
                    "state_dir",
                    Some(s),
                    format!("{:?} is not an absolute path", s.value),
                    "use an absolute path such as /var/lib/berth",
                );
            }
            PathBuf::from(&s.value)
        }
        (None, None) => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

/// `backend.docker.*` with `-v` and `-e`.
fn docker_section(
    docker: RawDocker,
    ov: &Overrides,
    host_env: &dyn Fn(&str) -> Option<String>,
    c: &mut Collector<'_>,
) -> DockerBackend {
    let stop_grace_period = c.duration_min(
        "backend.docker.stop_grace_period",
        docker.stop_grace_period.as_ref(),
        DEFAULT_STOP_GRACE,
        Duration::ZERO,
        "use a duration such as 30s, 5m or 1h30m",
    );
    let default_image = docker
        .default_image
        .as_ref()
        .map(|s| s.value.clone())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    if let Err(e) = crate::spec::image::ImageRef::parse(&default_image) {
        c.at(
            "backend.docker.default_image",
            docker.default_image.as_ref(),
            e.to_string(),
            "use an image reference such as ubuntu:22.04",
        );
    }
    let host = docker.host.as_ref().map(|s| s.value.clone());
    if let Some(h) = &docker.host
        && !["unix://", "tcp://", "http://"]
            .iter()
            .any(|p| h.value.starts_with(p))
    {
        c.at(
            "backend.docker.host",
            Some(h),
            format!("{:?} is not a Docker host address", h.value),
            "use unix:///var/run/docker.sock or tcp://host:2375",
        );
    }

    let mut volumes = Vec::new();
    for v in docker.volumes.iter().flatten() {
        if let Err(p) = validate_volume(&v.value) {
            c.at(
                "backend.docker.volumes",
                Some(v),
                p,
                "write HOST:CONTAINER[:ro|rw]",
            );
        }
        volumes.push(v.value.clone());
    }
    for v in &ov.volumes {
        if let Err(p) = validate_volume(v) {
            c.at::<String>("--volume", None, p, "write HOST:CONTAINER[:ro|rw]");
        }
        volumes.push(v.clone());
    }

    let mut environment = Vec::new();
    for e in docker.environment.iter().flatten() {
        let name = e.name.value.clone();
        if name.is_empty() || name.contains('=') {
            c.at(
                "backend.docker.environment.name",
                Some(&e.name),
                format!("{name:?} is not a variable name"),
                "use a name without '='; put the value under `value:`",
            );
            continue;
        }
        let value = e
            .value
            .clone()
            .unwrap_or_else(|| host_env(&name).unwrap_or_default());
        environment.push((name, value));
    }
    for flag in &ov.env {
        match parse_env_flag(flag, host_env) {
            Ok(kv) => environment.push(kv),
            Err(p) => c.at::<String>("--env", None, p, "use -e KEY=VALUE or -e KEY"),
        }
    }
    let policy = policy_of(docker.policy.unwrap_or_default(), c);
    let auth_config = docker.auth_config.as_ref().map(|sp| {
        match std::fs::read_to_string(&sp.value) {
            Ok(text) if serde_json::from_str::<serde_json::Value>(&text).is_ok() => {}
            Ok(_) => c.at(
                "backend.docker.auth_config",
                Some(sp),
                format!("{} is not JSON", sp.value),
                "point it at a Docker CLI config.json (with an `auths` map)",
            ),
            Err(e) => c.at(
                "backend.docker.auth_config",
                Some(sp),
                format!("cannot read {}: {e}", sp.value),
                "check the path and that the berth user may read it",
            ),
        }
        PathBuf::from(&sp.value)
    });
    DockerBackend {
        host,
        default_image,
        pull_policy: docker.pull_policy.unwrap_or(PullPolicy::IfNotPresent),
        volumes,
        environment,
        stop_grace_period,
        policy,
        auth_config,
    }
}

fn log_level_of(ov: &Overrides, log: &RawLog, c: &mut Collector<'_>) -> String {
    let log_level = ov
        .log_level
        .clone()
        .or_else(|| log.level.as_ref().map(|s| s.value.clone()))
        .unwrap_or_else(|| "info".to_string());
    if !valid_log_filter(&log_level) {
        c.at(
            if ov.log_level.is_some() {
                "--log-level"
            } else {
                "log.level"
            },
            if ov.log_level.is_some() {
                None
            } else {
                log.level.as_ref()
            },
            format!("{log_level:?} is not a log level or filter"),
            "use error, warn, info, debug or trace (or a filter such as info,berth=debug)",
        );
    }
    log_level
}

fn admission_section(raw: Option<RawAdmission>, c: &mut Collector<'_>) -> AdmissionSettings {
    let adm = raw.unwrap_or_default();
    let reserve = resources_of("admission.reserve", adm.reserve, c);
    let min_free_disk = c.size_min(
        "admission.min_free_disk",
        adm.min_free_disk.as_ref(),
        DEFAULT_MIN_FREE_DISK,
        0,
        "use a size such as 1GiB, or 0 to disable the check",
    );
    AdmissionSettings {
        reserve,
        min_free_disk,
    }
}

/// `environments` and `default_environment`.
fn environments_section(
    raw: &mut RawConfig,
    c: &mut Collector<'_>,
) -> (
    BTreeMap<String, crate::spec::environment::Environment>,
    Option<String>,
) {
    let mut environments = BTreeMap::new();
    for (name, e) in raw.environments.take().unwrap_or_default() {
        let key = format!("environments.{name}");
        if let Some(img) = &e.image
            && let Err(err) = crate::spec::image::ImageRef::parse(&img.value)
        {
            c.at(
                &format!("{key}.image"),
                Some(img),
                err.to_string(),
                "use an image reference such as ubuntu:22.04",
            );
        }
        if let Some(w) = &e.workdir
            && !w.value.starts_with('/')
        {
            c.at(
                &format!("{key}.workdir"),
                Some(w),
                format!("{:?} is not an absolute path", w.value),
                "use an absolute path such as /workspace/app",
            );
        }
        for k in e.env.iter().flatten().map(|(k, _)| k) {
            if k.is_empty() || k.contains('=') {
                c.at::<String>(
                    &format!("{key}.env"),
                    None,
                    format!("{k:?} is not a variable name"),
                    "use names without '='",
                );
            }
        }
        let resources = resources_of(&format!("{key}.resources"), e.resources, c);
        let env = crate::spec::environment::Environment {
            source: format!("config:{name}"),
            image: e.image.map(|i| i.value),
            env: e.env.unwrap_or_default(),
            repos: e
                .repos
                .as_ref()
                .map(|r| r.value.clone())
                .unwrap_or_default(),
            setup: e
                .setup
                .as_ref()
                .map(|r| r.value.clone())
                .unwrap_or_default(),
            workdir: e.workdir.map(|w| w.value),
            resources,
            runtime: e.runtime.filter(|r| !r.is_empty()),
            egress: match &e.egress {
                None => None,
                Some(v) => match crate::spec::egress::Narrowing::parse(&v.value) {
                    Ok(n) => Some(n),
                    Err(problem) => {
                        c.at(&format!("{key}.egress"), Some(v), problem, "write egress: {mode: allowlist, allow: [pypi.org, \"*.github.com:443\"]}");
                        None
                    }
                },
            },
        };
        // Workdir is reported above with its own line; repos and setup here.
        let checked = crate::spec::environment::Environment {
            workdir: None,
            ..env.clone()
        };
        if let Err(problem) = crate::spec::environment::validate(&checked) {
            if problem.contains("setup command") {
                c.at(
                    &format!("{key}.setup"),
                    e.setup.as_ref(),
                    problem,
                    "remove the empty command",
                );
            } else {
                c.at(
                    &format!("{key}.repos"),
                    e.repos.as_ref(),
                    problem,
                    "fix the repository entry",
                );
            }
        }
        environments.insert(name.clone(), env);
    }
    let default_environment = raw.default_environment.take().map(|d| {
        if !environments.contains_key(&d.value) {
            c.at(
                "default_environment",
                Some(&d),
                format!("{:?} is not one of the environments defined here", d.value),
                "name an entry of `environments:`",
            );
        }
        d.value
    });
    (environments, default_environment)
}

fn transcript_section(raw: Option<RawTranscript>, c: &mut Collector<'_>) -> TranscriptSettings {
    let tr = raw.unwrap_or_default();
    let max_bytes = c.size_min(
        "transcript.max_bytes",
        tr.max_bytes.as_ref(),
        DEFAULT_TRANSCRIPT_MAX,
        64 << 10,
        "use a size such as 256MiB",
    );
    let tail_bytes = c.size_min(
        "transcript.tail_bytes",
        tr.tail_bytes.as_ref(),
        DEFAULT_TRANSCRIPT_TAIL,
        4 << 10,
        "use a size such as 256MiB",
    );
    if tail_bytes > max_bytes {
        c.at(
            "transcript.tail_bytes",
            tr.tail_bytes.as_ref(),
            format!("tail_bytes ({tail_bytes}) is larger than max_bytes ({max_bytes})"),
            "keep tail_bytes at most max_bytes",
        );
    }
    let retention = c.duration(
        "transcript.retention",
        tr.retention.as_ref(),
        DEFAULT_RETENTION,
        "use a duration such as 24h",
    );
    let full_disk_patience = c.duration(
        "transcript.full_disk_patience",
        tr.full_disk_patience.as_ref(),
        DEFAULT_FULL_DISK_PATIENCE,
        "use a duration such as 5m",
    );
    let anchor_every = c.size_min(
        "transcript.anchor_every",
        tr.anchor_every.as_ref(),
        DEFAULT_ANCHOR_EVERY,
        0,
        "use a size such as 128MiB, or 0 to never freeze a task for an anchor",
    );
    if anchor_every != 0 && !(MIN_ANCHOR_EVERY..=MAX_ANCHOR_EVERY).contains(&anchor_every) {
        c.at(
            "transcript.anchor_every",
            tr.anchor_every.as_ref(),
            format!("{anchor_every} bytes is outside 1MiB..=256MiB (a task is frozen briefly at every anchor, and the engine keeps only 500 MB of a container's log)"),
            "use a size such as 128MiB, or 0 to never freeze a task for an anchor",
        );
    }
    let redact: Vec<Secret> = tr
        .redact
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(Secret::new)
        .collect();

    TranscriptSettings {
        max_bytes,
        tail_bytes,
        redact,
        retention,
        full_disk_patience,
        anchor_every,
        capture_drain: DEFAULT_CAPTURE_DRAIN,
    }
}

/// Default of [`TranscriptSettings::capture_drain`].
pub const DEFAULT_CAPTURE_DRAIN: Duration = Duration::from_secs(60);

/// Default of `transcript.anchor_every`.
pub const DEFAULT_ANCHOR_EVERY: u64 = 128 << 20;
const MIN_ANCHOR_EVERY: u64 = 1 << 20;
const MAX_ANCHOR_EVERY: u64 = 256 << 20;

/// Default of `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The effective configuration as printed by `check-config`: secrets and env values redacted.
#[derive(Debug, Serialize)]
pub struct Effective {
    worker_id: String,
    max_concurrent_tasks: u32,
    idle_on_complete: Option<String>,
    cleanup: bool,
    state_dir: String,
    control_plane: EffectiveControlPlane,
    backend: EffectiveBackend,
    labels: BTreeMap<String, String>,
    log: EffectiveLog,
    api: EffectiveApi,
    shutdown_mode: ShutdownMode,
    shutdown_grace: String,
    transcript: EffectiveTranscript,
    admission: EffectiveAdmission,
}

#[derive(Debug, Serialize)]
struct EffectiveApi {
    listen: String,
    socket_group: Option<String>,
}

#[derive(Debug, Serialize)]
struct EffectiveAdmission {
    reserve_cpus: Option<f64>,
    reserve_memory: Option<u64>,
    min_free_disk: u64,
}

#[derive(Debug, Serialize)]
struct EffectiveTranscript {
    max_bytes: u64,
    tail_bytes: u64,
    redact: Vec<String>,
    retention: String,
    full_disk_patience: String,
    anchor_every: u64,
}

#[derive(Debug, Serialize)]
struct EffectiveControlPlane {
    url: String,
    server_root_url: String,
    api_key: String,
    ca_file: Option<String>,
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
    allow_insecure: bool,
    heartbeat_interval: String,
    max_message_size: u64,
    session_sharing_server_url: Option<String>,
    environments_url: Option<String>,
    environments_ttl: String,
    status_interval: String,
}

#[derive(Debug, Serialize)]
struct EffectiveBackend {
    docker: EffectiveDocker,
}

#[derive(Debug, Serialize)]
struct EffectiveDocker {
    host: String,
    default_image: String,
    pull_policy: PullPolicy,
    volumes: Vec<String>,
    environment: Vec<String>,
    stop_grace_period: String,
    policy: EffectivePolicy,
    auth_config: Option<String>,
}

#[derive(Debug, Serialize)]
struct EffectivePolicy {
    allowed_images: Vec<String>,
    no_new_privileges: bool,
    cap_drop: Vec<String>,
    cap_add: Vec<String>,
    pids_limit: Option<i64>,
    read_only_rootfs: bool,
    user: Option<String>,
    runtime: Option<String>,
    allowed_runtimes: Vec<String>,
    network: String,
    profile: &'static str,
    egress_mode: &'static str,
    egress_allow: usize,
    egress_proxy_port: u16,
    default_cpus: Option<f64>,
    default_memory: Option<u64>,
    max_cpus: Option<f64>,
    max_memory: Option<u64>,
    timeout: String,
}

#[derive(Debug, Serialize)]
struct EffectiveLog {
    level: String,
    format: LogFormat,
}

impl Config {
    /// A printable view with the API key and env values redacted.
    pub fn effective(&self) -> Effective {
        let p = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        Effective {
            worker_id: self.worker_id.clone(),
            max_concurrent_tasks: self.max_concurrent_tasks,
            idle_on_complete: self.idle_on_complete.clone(),
            cleanup: self.cleanup,
            state_dir: self.state_dir.display().to_string(),
            control_plane: EffectiveControlPlane {
                url: crate::transcript::redaction::display_url(self.control_plane.url.as_str()),
                server_root_url: crate::transcript::redaction::display_url(
                    &self.control_plane.server_root_url,
                ),
                api_key: if self.control_plane.api_key_source.is_empty() {
                    "(none configured: `berth run` needs one)".to_string()
                } else {
                    format!("[REDACTED] (from {})", self.control_plane.api_key_source)
                },
                ca_file: p(&self.control_plane.ca_file),
                client_cert_file: p(&self.control_plane.client_cert_file),
                client_key_file: p(&self.control_plane.client_key_file),
                allow_insecure: self.control_plane.allow_insecure,
                heartbeat_interval: humantime::format_duration(
                    self.control_plane.heartbeat_interval,
                )
                .to_string(),
                max_message_size: self.control_plane.max_message_size,
                session_sharing_server_url: self
                    .control_plane
                    .session_sharing_server_url
                    .as_deref()
                    .map(crate::transcript::redaction::display_url),
                environments_url: self
                    .control_plane
                    .environments_url
                    .as_deref()
                    .map(crate::transcript::redaction::display_url),
                environments_ttl: humantime::format_duration(self.control_plane.environments_ttl)
                    .to_string(),
                status_interval: humantime::format_duration(self.control_plane.status_interval)
                    .to_string(),
            },
            backend: EffectiveBackend {
                docker: EffectiveDocker {
                    host: self
                        .docker
                        .host
                        .clone()
                        .unwrap_or_else(|| "(DOCKER_HOST or unix:///var/run/docker.sock)".into()),
                    default_image: self.docker.default_image.clone(),
                    pull_policy: self.docker.pull_policy,
                    volumes: self.docker.volumes.clone(),
                    environment: self
                        .docker
                        .environment
                        .iter()
                        .map(|(k, _)| format!("{k}=[REDACTED]"))
                        .collect(),
                    stop_grace_period: humantime::format_duration(self.docker.stop_grace_period)
                        .to_string(),
                    auth_config: self
                        .docker
                        .auth_config
                        .as_ref()
                        .map(|p| p.display().to_string()),
                    policy: {
                        let p = &self.docker.policy;
                        EffectivePolicy {
                            allowed_images: p.allowed_images.clone(),
                            no_new_privileges: p.security.no_new_privileges,
                            cap_drop: p.security.cap_drop.clone(),
                            cap_add: p.security.cap_add.clone(),
                            pids_limit: p.security.pids_limit,
                            read_only_rootfs: p.security.read_only_rootfs,
                            user: p.security.user.clone(),
                            runtime: p.security.runtime.clone(),
                            allowed_runtimes: p.allowed_runtimes.clone(),
                            network: p.security.network.clone(),
                            profile: match p.profile {
                                crate::spec::policy::Profile::Default => "default",
                                crate::spec::policy::Profile::Strict => "strict",
                            },
                            egress_mode: p.egress.mode.as_str(),
                            egress_allow: p.egress.allow.len(),
                            egress_proxy_port: p.egress_proxy_port,
                            default_cpus: p.default_resources.cpus,
                            default_memory: p.default_resources.memory,
                            max_cpus: p.max_resources.cpus,
                            max_memory: p.max_resources.memory,
                            timeout: humantime::format_duration(p.timeout).to_string(),
                        }
                    },
                },
            },
            labels: self.labels.clone(),
            log: EffectiveLog {
                level: self.log_level.clone(),
                format: self.log_format,
            },
            shutdown_mode: self.shutdown_mode,
            shutdown_grace: humantime::format_duration(self.shutdown_grace).to_string(),
            api: EffectiveApi {
                listen: self
                    .api
                    .listen
                    .as_ref()
                    .map_or_else(|| "off".to_string(), ToString::to_string),
                socket_group: self.api.socket_group.clone(),
            },
            admission: EffectiveAdmission {
                reserve_cpus: self.admission.reserve.cpus,
                reserve_memory: self.admission.reserve.memory,
                min_free_disk: self.admission.min_free_disk,
            },
            transcript: EffectiveTranscript {
                max_bytes: self.transcript.max_bytes,
                tail_bytes: self.transcript.tail_bytes,
                redact: self
                    .transcript
                    .redact
                    .iter()
                    .map(|_| "[REDACTED]".to_string())
                    .collect(),
                retention: humantime::format_duration(self.transcript.retention).to_string(),
                full_disk_patience: humantime::format_duration(self.transcript.full_disk_patience)
                    .to_string(),
                anchor_every: self.transcript.anchor_every,
            },
        }
    }

    /// The effective configuration as YAML.
    pub fn effective_yaml(&self) -> String {
        serde_saphyr::to_string(&self.effective())
            .unwrap_or_else(|e| format!("# cannot render effective config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn with_key() -> Overrides {
        Overrides {
            api_key: Some(Secret::new("k")),
            ..Overrides::default()
        }
    }

    fn load_yaml(yaml: &str, ov: &Overrides) -> Result<Config, ConfigErrors> {
        load_str(Some(yaml), Some(Path::new("c.yaml")), ov, &no_env)
    }

    fn errors(yaml: &str, ov: &Overrides) -> Vec<ConfigError> {
        match load_yaml(yaml, ov) {
            Ok(c) => panic!("expected errors, got {c:?}"),
            Err(e) => e.0,
        }
    }

    fn one_error(yaml: &str) -> ConfigError {
        let e = errors(yaml, &with_key());
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].clone()
    }

    #[test]
    fn minimal_file_gets_every_default() {
        let c = load_yaml("worker_id: host-1\n", &with_key()).unwrap();
        assert_eq!(c.worker_id, "host-1");
        assert_eq!(c.max_concurrent_tasks, DEFAULT_MAX_CONCURRENT_TASKS);
        assert!(c.cleanup);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/berth"));
        assert_eq!(c.control_plane.url.as_str(), DEFAULT_URL);
        assert_eq!(c.control_plane.server_root_url, DEFAULT_SERVER_ROOT_URL);
        assert_eq!(c.control_plane.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.control_plane.max_message_size, 16 << 20);
        assert_eq!(c.docker.default_image, "ubuntu:22.04");
        assert_eq!(c.docker.pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(c.docker.stop_grace_period, Duration::from_secs(10));
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.shutdown_mode, ShutdownMode::Preserve);
        assert_eq!(c.transcript.max_bytes, 256 << 20);
        assert_eq!(c.transcript.tail_bytes, 16 << 20);
        assert_eq!(c.transcript.retention, Duration::from_secs(86400));
        assert_eq!(c.transcript.full_disk_patience, Duration::from_secs(300));
        assert_eq!(c.transcript.anchor_every, 128 << 20);
        assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert!(c.transcript.redact.is_empty());
    }

    #[test]
    fn isolation_keys_parse_and_bad_values_name_their_key_and_line() {
        let yaml = "worker_id: w\nbackend:\n  docker:\n    policy:\n      security:\n        profile: strict\n        runtime: runsc\n        allowed_runtimes: [kata]\n      egress:\n        mode: allowlist\n        allow: [pypi.org, '*.github.com:443', 10.0.0.0/8]\n        proxy_port: 3129\n";
        let c = load_yaml(yaml, &with_key()).unwrap();
        let p = &c.docker.policy;
        assert_eq!(p.profile, crate::spec::policy::Profile::Strict);
        assert_eq!(p.security.runtime.as_deref(), Some("runsc"));
        assert_eq!(p.allowed_runtimes, ["kata"]);
        assert_eq!(p.egress.mode, crate::spec::egress::Mode::Allowlist);
        assert_eq!(p.egress.allow.len(), 3);
        assert_eq!(p.egress_proxy_port, 3129);
        let d = load_yaml("worker_id: w\n", &with_key()).unwrap();
        assert_eq!(d.docker.policy.egress.mode, crate::spec::egress::Mode::Open);
        assert_eq!(
            d.docker.policy.profile,
            crate::spec::policy::Profile::Default
        );
        for (section, bad, key) in [
            (
                "security",
                "        profile: paranoid\n",
                "backend.docker.policy.security.profile",
            ),
            (
                "security",
                "        runtime: 'run sc'\n",
                "backend.docker.policy.security.runtime",
            ),
            (
                "egress",
                "        mode: closed\n",
                "backend.docker.policy.egress.mode",
            ),
            (
                "egress",
                "        allow: ['http://x.com']\n",
                "backend.docker.policy.egress.allow",
            ),
            (
                "egress",
                "        proxy_port: 0\n",
                "backend.docker.policy.egress.proxy_port",
            ),
        ] {
            let y =
                format!("worker_id: w\nbackend:\n  docker:\n    policy:\n      {section}:\n{bad}");
            let e = one_error(&y);
            assert_eq!(
                (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
                (key, Some(6)),
                "{e}"
            );
        }
    }

    #[test]
    fn the_operator_policy_from_the_issue_is_expressible_and_validated() {
        let yaml = "worker_id: w\nbackend:\n  docker:\n    policy:\n      allowed_images: ['registry.example.com/**']\n      security:\n        no_new_privileges: true\n        cap_drop: [ALL]\n        pids_limit: 512\n        network: none\n      max_resources:\n        cpus: 4\n        memory: 8GiB\n      timeout: 2h\n";
        let c = load_yaml(yaml, &with_key()).unwrap();
        let p = &c.docker.policy;
        assert_eq!(p.allowed_images, ["registry.example.com/**"]);
        assert_eq!(
            (p.max_resources.cpus, p.max_resources.memory),
            (Some(4.0), Some(8 << 30))
        );
        assert_eq!(p.timeout, Duration::from_secs(7200));
        assert_eq!(
            (p.security.pids_limit, p.security.network.as_str()),
            (Some(512), "none")
        );
        assert_eq!(p.security.cap_drop, ["ALL"]);
        for (bad, key, line) in [
            (
                "        network: host\n",
                "backend.docker.policy.security.network",
                6,
            ),
            (
                "        cap_add: [net_raw]\n",
                "backend.docker.policy.security.cap_add",
                6,
            ),
        ] {
            let y =
                format!("worker_id: w\nbackend:\n  docker:\n    policy:\n      security:\n{bad}");
            let e = one_error(&y);
            assert_eq!(
                (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
                (key, Some(line)),
                "{e}"
            );
        }
        let e = one_error(
            "worker_id: w\nbackend:\n  docker:\n    policy:\n      max_resources:\n        memory: 8GB\n",
        );
        assert_eq!(e.key, "backend.docker.policy.max_resources.memory");
        let e = one_error(
            "worker_id: w\nbackend:\n  docker:\n    policy:\n      default_resources:\n        cpus: -1\n",
        );
        assert_eq!(e.key, "backend.docker.policy.default_resources.cpus");
    }

    #[test]
    fn auth_config_must_be_a_readable_json_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("config.json");
        std::fs::write(&good, r#"{"auths": {}}"#).unwrap();
        let y = format!(
            "worker_id: w\nbackend:\n  docker:\n    auth_config: {}\n",
            good.display()
        );
        let c = load_yaml(&y, &with_key()).unwrap();
        assert_eq!(c.docker.auth_config, Some(good));
        let e =
            one_error("worker_id: w\nbackend:\n  docker:\n    auth_config: /nonexistent.json\n");
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("backend.docker.auth_config", Some(4))
        );
    }

    #[test]
    fn named_environments_are_validated() {
        let c = load_yaml("worker_id: w\nenvironments:\n  py:\n    image: python:3.12\n    env: {PIP_NO_CACHE_DIR: '1'}\n    workdir: /src\ndefault_environment: py\n", &with_key())
            .unwrap();
        let py = c.environments.get("py").cloned().unwrap_or_default();
        assert_eq!(
            (
                py.source.as_str(),
                py.image.as_deref(),
                py.workdir.as_deref()
            ),
            ("config:py", Some("python:3.12"), Some("/src"))
        );
        assert_eq!(c.default_environment.as_deref(), Some("py"));
        let e = one_error(
            "worker_id: w\nenvironments:\n  py:\n    image: python:3.12\ndefault_environment: ruby\n",
        );
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("default_environment", Some(5))
        );
        let e = one_error("worker_id: w\nenvironments:\n  py:\n    workdir: src\n");
        assert_eq!(e.key, "environments.py.workdir");
        let e =
            one_error("worker_id: w\nenvironments:\n  py:\n    setup: [make]\n    steps: [x]\n");
        assert!(e.problem.contains("unknown field `steps`"), "{}", e.problem);
        let e = one_error(
            "worker_id: w\nenvironments:\n  py:\n    repos:\n      - url: https://h/a.git\n      - url: https://h/b/a\n",
        );
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("environments.py.repos", Some(5))
        );
        assert!(e.problem.contains("/workspace/a"), "{}", e.problem);
        let e = one_error("worker_id: w\nenvironments:\n  py:\n    setup: ['make', '']\n");
        assert_eq!(e.key, "environments.py.setup");
        let e = one_error("worker_id: w\nenvironments:\n  py:\n    resources: {memory: 1MiB}\n");
        assert_eq!(e.key, "environments.py.resources.memory");
        let c = load_yaml(
            "worker_id: w\nenvironments:\n  app:\n    repos:\n      - {url: /srv/app.git, ref: main, path: src/app}\n    setup: [make deps]\n    resources: {cpus: 2, memory: 1GiB}\n",
            &with_key(),
        )
        .unwrap();
        let app = c.environments.get("app").cloned().unwrap_or_default();
        assert_eq!(app.repos[0].path.as_deref(), Some("src/app"));
        assert_eq!(app.repos[0].git_ref.as_deref(), Some("main"));
        assert_eq!(app.setup, vec!["make deps"]);
        assert_eq!(
            (app.resources.cpus, app.resources.memory),
            (Some(2.0), Some(1 << 30))
        );
    }

    #[test]
    fn the_environments_api_url_needs_an_id_placeholder_and_https_off_loopback() {
        let c = load_yaml(
            "worker_id: w\ncontrol_plane:\n  environments_url: https://cp.example.com/api/v1/environments/{id}\n  environments_ttl: 90s\n",
            &with_key(),
        )
        .unwrap();
        assert_eq!(
            c.control_plane.environments_url.as_deref(),
            Some("https://cp.example.com/api/v1/environments/{id}")
        );
        assert_eq!(c.control_plane.environments_ttl, Duration::from_secs(90));
        let d = load_yaml("worker_id: w\n", &with_key()).unwrap();
        assert_eq!(
            (
                d.control_plane.environments_url,
                d.control_plane.environments_ttl
            ),
            (None, Duration::from_secs(300))
        );
        for (yaml, needle) in [
            ("https://cp/envs/", "no {id}"),
            ("http://cp.example.com/e/{id}", "unencrypted"),
            ("ftp://cp/{id}", "not HTTP"),
            ("not a url {id}", "not a URL"),
        ] {
            let e = one_error(&format!(
                "worker_id: w\ncontrol_plane:\n  environments_url: \"{yaml}\"\n"
            ));
            assert_eq!(
                (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
                ("control_plane.environments_url", Some(3))
            );
            assert!(e.problem.contains(needle), "{yaml}: {}", e.problem);
        }
        assert!(
            load_yaml(
                "worker_id: w\ncontrol_plane:\n  environments_url: http://127.0.0.1:9/e/{id}\n",
                &with_key()
            )
            .is_ok()
        );
        let e = one_error("worker_id: w\ncontrol_plane:\n  environments_ttl: soon\n");
        assert_eq!(e.key, "control_plane.environments_ttl");
    }

    #[test]
    fn transcript_settings_are_validated() {
        let e = one_error("worker_id: w\ntranscript:\n  max_bytes: 1MiB\n  tail_bytes: 2MiB\n");
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("transcript.tail_bytes", Some(4))
        );
        let e = one_error("worker_id: w\ntranscript:\n  max_bytes: 10MB\n");
        assert_eq!(e.key, "transcript.max_bytes");
        let e = one_error("worker_id: w\ntranscript:\n  anchor_every: 1KiB\n");
        assert_eq!(
            (e.key.as_str(), e.location.as_ref().map(|l| l.1)),
            ("transcript.anchor_every", Some(3))
        );
        assert!(e.problem.contains("1MiB..=256MiB"), "{}", e.problem);
        assert_eq!(
            one_error("worker_id: w\ntranscript:\n  anchor_every: 1GiB\n").key,
            "transcript.anchor_every"
        );
        let c = load_yaml(
            "worker_id: w\ntranscript:\n  anchor_every: 0\n",
            &with_key(),
        )
        .unwrap();
        assert_eq!(c.transcript.anchor_every, 0);
        let e = one_error("worker_id: w\ntranscript:\n  full_disk_patience: 300\n");
        assert_eq!(
            (
                e.key.as_str(),
                e.location.as_ref().map(|l| l.1),
                e.fix.as_str()
            ),
            (
                "transcript.full_disk_patience",
                Some(3),
                "use a duration such as 5m"
            )
        );
        let e = one_error("worker_id: w\nshutdown_mode: kill\n");
        assert!(e.problem.contains("preserve"), "{}", e.problem);
        let c = load_yaml(
            "worker_id: w\nshutdown_mode: cancel\ntranscript:\n  redact: [hunter2hunter2]\n",
            &with_key(),
        )
        .unwrap();
        assert_eq!(c.shutdown_mode, ShutdownMode::Cancel);
        assert_eq!(c.transcript.redact, vec![Secret::new("hunter2hunter2")]);
        assert!(!c.effective_yaml().contains("hunter2"));
    }

    #[test]
    fn example_file_is_valid_and_matches_the_defaults() {
        let text = include_str!("../config.example.yaml");
        let c = load_str(
            Some(text),
            Some(Path::new("config.example.yaml")),
            &with_key(),
            &no_env,
        )
        .unwrap_or_else(|e| panic!("config.example.yaml is invalid:\n{e}"));
        let d = load_yaml(&format!("worker_id: {}\n", c.worker_id), &with_key()).unwrap();
        // The example documents defaults: loading it must equal loading nothing but the id
        // (apart from where it came from).
        assert_eq!(Config { source: None, ..c }, Config { source: None, ..d });
    }

    #[test]
    fn unknown_keys_are_reported_with_line_column_and_expected_keys() {
        let e = one_error("worker_id: w\ncontrol_plane:\n  urll: wss://x\n");
        assert_eq!(e.location, Some((PathBuf::from("c.yaml"), 3, 3)));
        assert!(e.problem.contains("unknown field `urll`"), "{}", e.problem);
        assert!(e.problem.contains("url"), "{}", e.problem);
    }

    #[test]
    fn yaml_level_errors_have_positions() {
        for (yaml, line, needle) in [
            ("worker_id: w\nworker_id: v\n", 2, "duplicate"),
            ("worker_id: w\ncleanup: yes\n", 2, "boolean"),
            ("worker_id: w\nmax_concurrent_tasks: -1\n", 2, "u32"),
            (
                "worker_id: w\nbackend:\n  docker:\n    pull_policy: sometimes\n",
                4,
                "if-not-present",
            ),
            ("worker_id: w\nlog:\n  format: xml\n", 3, "json"),
        ] {
            let e = one_error(yaml);
            assert_eq!(e.location.as_ref().map(|l| l.1), Some(line), "{yaml}: {e}");
            assert!(e.problem.contains(needle), "{yaml}: {}", e.problem);
        }
    }

    #[test]
    fn every_semantic_error_names_key_line_and_fix() {
        let cases: [(&str, &str, u64); 12] = [
            ("worker_id: warp-1\n", "worker_id", 1),
            ("worker_id: WARPED\n", "worker_id", 1),
            ("worker_id: 'has space'\n", "worker_id", 1),
            (
                "worker_id: w\ncontrol_plane:\n  url: ws://example.com/ws\n",
                "control_plane.url",
                3,
            ),
            (
                "worker_id: w\ncontrol_plane:\n  url: https://example.com/ws\n",
                "control_plane.url",
                3,
            ),
            (
                "worker_id: w\ncontrol_plane:\n  url: '::nope'\n",
                "control_plane.url",
                3,
            ),
            (
                "worker_id: w\ncontrol_plane:\n  heartbeat_interval: 30\n",
                "control_plane.heartbeat_interval",
                3,
            ),
            (
                "worker_id: w\ncontrol_plane:\n  max_message_size: 16MB\n",
                "control_plane.max_message_size",
                3,
            ),
            (
                "worker_id: w\nbackend:\n  docker:\n    default_image: 'Not An Image'\n",
                "backend.docker.default_image",
                4,
            ),
            (
                "worker_id: w\nbackend:\n  docker:\n    volumes: ['rel/dir:/x']\n",
                "backend.docker.volumes",
                4,
            ),
            (
                "worker_id: w\nbackend:\n  docker:\n    stop_grace_period: soon\n",
                "backend.docker.stop_grace_period",
                4,
            ),
            ("worker_id: w\nstate_dir: relative/dir\n", "state_dir", 2),
        ];
        for (yaml, key, line) in cases {
            let e = one_error(yaml);
            assert_eq!(e.key, key, "{yaml}");
            assert_eq!(e.location.as_ref().map(|l| l.1), Some(line), "{yaml}: {e}");
            assert!(!e.fix.is_empty(), "{yaml}");
        }
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let e = errors(
            "worker_id: warp\ncontrol_plane:\n  heartbeat_interval: x\nlog:\n  level: 'not a level!!'\n",
            &Overrides::default(),
        );
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "worker_id",
                "control_plane.api_key_file",
                "control_plane.heartbeat_interval",
                "log.level"
            ]
        );
    }

    #[test]
    fn worker_id_is_required() {
        let e = errors("cleanup: false\n", &with_key());
        assert_eq!(e[0].key, "worker_id");
        assert!(e[0].fix.contains("--worker-id"));
    }

    #[test]
    fn plain_ws_is_allowed_to_loopback_or_when_insecure_is_set() {
        for url in [
            "ws://127.0.0.1:1/ws",
            "ws://localhost/ws",
            "ws://[::1]:9/ws",
        ] {
            let y = format!("worker_id: w\ncontrol_plane:\n  url: {url}\n");
            assert!(load_yaml(&y, &with_key()).is_ok(), "{url}");
        }
        let y = "worker_id: w\ncontrol_plane:\n  url: ws://10.0.0.1/ws\n  allow_insecure: true\n";
        assert!(load_yaml(y, &with_key()).is_ok());
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let yaml = "worker_id: file-id\nmax_concurrent_tasks: 2\ncleanup: true\nlog:\n  level: warn\n  format: json\ncontrol_plane:\n  url: wss://file.example/ws\n";
        let c = load_yaml(yaml, &with_key()).unwrap();
        assert_eq!(
            (
                c.worker_id.as_str(),
                c.max_concurrent_tasks,
                c.log_level.as_str()
            ),
            ("file-id", 2, "warn")
        );
        let ov = Overrides {
            worker_id: Some("flag-id".into()),
            max_concurrent_tasks: Some(0),
            control_plane_url: Some("wss://flag.example/ws".into()),
            log_level: Some("debug".into()),
            log_format: Some(LogFormat::Text),
            no_cleanup: true,
            idle_on_complete: Some("5m".into()),
            ..with_key()
        };
        let c = load_yaml(yaml, &ov).unwrap();
        assert_eq!(c.worker_id, "flag-id");
        assert_eq!(c.max_concurrent_tasks, 0);
        assert_eq!(c.control_plane.url.as_str(), "wss://flag.example/ws");
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(!c.cleanup);
        assert_eq!(c.idle_on_complete.as_deref(), Some("5m"));
    }

    #[test]
    fn api_key_sources_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let flag_file = dir.path().join("flag-key");
        let cfg_file = dir.path().join("cfg-key");
        let creds = dir.path().join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(&flag_file, "from-flag-file\n").unwrap();
        std::fs::write(&cfg_file, "from-config-file").unwrap();
        std::fs::write(creds.join("api-key"), "from-credential").unwrap();
        let yaml = format!(
            "worker_id: w\ncontrol_plane:\n  api_key_file: {}\n",
            cfg_file.display()
        );
        let key = |ov: &Overrides, yaml: &str| {
            load_yaml(yaml, ov)
                .map(|c| c.control_plane.api_key.expose().to_string())
                .unwrap()
        };
        let base = Overrides {
            credentials_directory: Some(creds.clone()),
            ..Overrides::default()
        };
        assert_eq!(key(&base, "worker_id: w\n"), "from-credential");
        assert_eq!(key(&base, &yaml), "from-config-file");
        let ov = Overrides {
            api_key_file: Some(flag_file.clone()),
            ..base.clone()
        };
        assert_eq!(key(&ov, &yaml), "from-flag-file");
        let ov = Overrides {
            api_key: Some(Secret::new("from-flag")),
            ..ov
        };
        assert_eq!(key(&ov, &yaml), "from-flag");
    }

    #[test]
    fn unreadable_key_file_is_a_clear_error() {
        let yaml = "worker_id: w\ncontrol_plane:\n  api_key_file: /nonexistent/key\n";
        let e = errors(yaml, &Overrides::default());
        assert_eq!(e[0].key, "control_plane.api_key_file");
        assert_eq!(e[0].location.as_ref().map(|l| l.1), Some(3));
        assert!(e[0].problem.contains("/nonexistent/key"));
    }

    #[test]
    fn operator_env_config_then_flags_with_host_passthrough() {
        let host = |k: &str| (k == "HOME_TZ").then(|| "Europe/Paris".to_string());
        let yaml = "worker_id: w\nbackend:\n  docker:\n    environment:\n      - name: A\n        value: '1'\n      - name: HOME_TZ\n      - name: MISSING\n";
        let ov = Overrides {
            env: vec!["B=x=y".into(), "A=2".into(), "E=".into(), "HOME_TZ".into()],
            ..with_key()
        };
        let c = load_str(Some(yaml), None, &ov, &host).unwrap();
        let pairs: Vec<(&str, &str)> = c
            .docker
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("A", "1"),
                ("HOME_TZ", "Europe/Paris"),
                ("MISSING", ""),
                ("B", "x=y"),
                ("A", "2"),
                ("E", ""),
                ("HOME_TZ", "Europe/Paris"),
            ]
        );
    }

    #[test]
    fn volumes_config_then_flags() {
        let yaml = "worker_id: w\nbackend:\n  docker:\n    volumes: ['/srv/a:/a:ro', 'named:/b']\n";
        let ov = Overrides {
            volumes: vec!["/c:/c:rw".into()],
            ..with_key()
        };
        let c = load_yaml(yaml, &ov).unwrap();
        assert_eq!(c.docker.volumes, ["/srv/a:/a:ro", "named:/b", "/c:/c:rw"]);
        let bad = Overrides {
            volumes: vec!["/c".into()],
            ..with_key()
        };
        assert_eq!(errors("worker_id: w\n", &bad)[0].key, "--volume");
    }

    #[test]
    fn sizes_accept_only_bytes_and_iec_units() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("16MB").is_err());
        assert!(parse_size("10g").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn durations_refuse_bare_numbers() {
        assert_eq!(parse_duration("1h15m"), Ok(Duration::from_secs(4500)));
        assert!(parse_duration("90").is_err());
    }

    #[test]
    fn effective_config_never_prints_secrets() {
        let ov = Overrides {
            api_key: Some(Secret::new("supersecretkey")),
            env: vec!["TOKEN=hunter2hunter2".into()],
            ..Overrides::default()
        };
        let c = load_yaml("worker_id: w\n", &ov).unwrap();
        let y = c.effective_yaml();
        assert!(
            !y.contains("supersecretkey") && !y.contains("hunter2"),
            "{y}"
        );
        assert!(y.contains("TOKEN=[REDACTED]"), "{y}");
        assert!(!format!("{c:?}").contains("supersecretkey"));
        let c = load_yaml(
            "worker_id: w\ncontrol_plane:\n  url: ws://ops:urlpa55word@127.0.0.1:9/ws\n  environments_url: http://u:envpa55word@127.0.0.1:9/env/{id}\n",
            &ov,
        )
        .unwrap();
        let y = c.effective_yaml();
        assert!(
            !y.contains("urlpa55word") && !y.contains("envpa55word"),
            "{y}"
        );
        assert!(y.contains("ws://ops:[REDACTED]@127.0.0.1:9/ws"), "{y}");
    }

    #[test]
    fn env_flag_parsing() {
        let host = |k: &str| (k == "H").then(|| "hv".to_string());
        assert_eq!(parse_env_flag("K=V", &host), Ok(("K".into(), "V".into())));
        assert_eq!(parse_env_flag("K=", &host), Ok(("K".into(), "".into())));
        assert_eq!(
            parse_env_flag("K=a=b", &host),
            Ok(("K".into(), "a=b".into()))
        );
        assert_eq!(parse_env_flag("H", &host), Ok(("H".into(), "hv".into())));
        assert_eq!(parse_env_flag("U", &host), Ok(("U".into(), "".into())));
        assert!(parse_env_flag("=V", &host).is_err());
    }
}
