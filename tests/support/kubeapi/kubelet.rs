//! The simulated kubelet of the one node: runs each pod bound to it (init containers in order,
//! then the containers), pulls images (or fails to), keeps the containers' logs, reports
//! status and events, and stops containers when told (deletion, deadlines, evictions). It
//! does not depend on the apiserver being reachable: pods keep running through `down()`.

use std::sync::Arc;
use std::time::Duration;

use berth::backend::fake::{Script, ScriptStep};
use berth::protocol::Stream;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::events::Recorder;
use super::logs::{ContainerLog, LogStream};
use super::resources::Kind;
use super::state::{FollowEnd, Kill, PodRuntime, Shared, State, now_rfc3339};
use super::store::meta;

/// The knobs of the simulated node and kubelet (clones share them).
#[derive(Clone)]
pub struct Kubelet {
    pub(super) shared: Arc<Shared>,
}

impl Kubelet {
    /// Containers of `image` (exactly as the pod names it) run `script` instead of their
    /// interpreted command.
    pub fn image(&self, image: &str, script: Script) {
        self.shared
            .with(|st| st.kubelet.images.insert(image.to_string(), script));
    }

    /// `image` cannot be pulled: ErrImagePull, then ImagePullBackOff, until it is back.
    pub fn missing_image(&self, image: &str) {
        self.shared
            .with(|st| st.kubelet.missing.insert(image.to_string()));
    }

    /// `image` can be pulled again.
    pub fn restore_image(&self, image: &str) {
        self.shared.with(|st| st.kubelet.missing.remove(image));
    }

    /// Containers of `image` ignore SIGTERM: they run until the grace period ends (137).
    pub fn ignore_term(&self, image: &str) {
        self.shared
            .with(|st| st.kubelet.ignore_term.insert(image.to_string()));
    }

    /// The runtime's maximum log line size (default 16 KiB); longer lines become pieces.
    pub fn piece_size(&self, bytes: usize) {
        self.shared.with(|st| st.kubelet.piece_size = bytes.max(1));
    }

    /// Rotates a container's log file once it grows past `bytes` (CRI file bytes).
    pub fn rotate_at(&self, bytes: usize) {
        self.shared.with(|st| st.kubelet.rotate_at = Some(bytes));
    }

    /// Follow streams of pods/log end early (None: only when the container ends).
    pub fn follow_ends_early(&self, end: Option<FollowEnd>) {
        self.shared.with(|st| st.kubelet.follow_end = end);
    }

    /// The `PodLogsQuerySplitStreams` feature gate: `stream=` is honoured (else ignored).
    pub fn split_streams(&self, on: bool) {
        self.shared.with(|st| st.kubelet.split_streams = on);
    }

    /// Every piece of a long line carries the line's timestamp, as Docker's json-file log
    /// (under dockershim) hands them to the kubelet; by default each piece has its own, as
    /// containerd writes them.
    pub fn pieces_share_timestamp(&self, on: bool) {
        self.shared
            .with(|st| st.kubelet.pieces_share_timestamp = on);
    }

    /// Timestamps of pods/log in Go's trimmed RFC3339Nano instead of the kubelet's fixed
    /// nine digits.
    pub fn trimmed_timestamps(&self, on: bool) {
        self.shared.with(|st| st.kubelet.trimmed_timestamps = on);
    }

    /// Serve metrics.k8s.io PodMetrics (else 404, as without metrics-server).
    pub fn metrics(&self, on: bool) {
        self.shared.with(|st| st.kubelet.metrics = on);
    }

    /// What PodMetrics reports for each running container.
    pub fn usage(&self, nanocores: u64, bytes: u64) {
        self.shared.with(|st| st.kubelet.usage = (nanocores, bytes));
    }

    /// The node's allocatable CPU (cores) and memory (bytes); pods requesting more stay
    /// Pending as Unschedulable.
    pub fn capacity(&self, cpu: f64, memory_bytes: f64) {
        self.shared.with(|st| {
            st.kubelet.cpu = cpu;
            st.kubelet.memory = memory_bytes;
        });
    }

    /// A label of the node (for nodeSelector).
    pub fn node_label(&self, key: &str, value: &str) {
        self.shared
            .with(|st| st.kubelet.node_labels.insert(key.to_string(), json!(value)));
    }

    /// How long a container honouring SIGTERM takes to exit (default 0.2 s, capped by the
    /// grace period).
    pub fn term_delay(&self, d: Duration) {
        self.shared.with(|st| st.kubelet.term_delay = d);
    }

    /// Everything a container wrote to its log, rotated files included (merged streams, or
    /// one stream), without timestamps; None when there is no such log.
    pub fn written(
        &self,
        pod_uid: &str,
        container: &str,
        stream: Option<LogStream>,
    ) -> Option<Vec<u8>> {
        let st = self.shared.state.lock();
        st.logs
            .get(&(pod_uid.to_string(), container.to_string()))
            .map(|l| l.text(stream))
    }

    /// How many times a container's log was rotated.
    pub fn rotations(&self, pod_uid: &str, container: &str) -> u64 {
        let st = self.shared.state.lock();
        st.logs
            .get(&(pod_uid.to_string(), container.to_string()))
            .map_or(0, |l| l.rotations)
    }
}

/// Appends a container's write to its log.
pub fn log_write(st: &mut State, uid: &str, container: &str, stream: LogStream, bytes: &[u8]) {
    let piece = st.kubelet.piece_size;
    let share = st.kubelet.pieces_share_timestamp;
    let rot = st.kubelet.rotate_at;
    let mut c = st.clock_ns;
    {
        let mut clock = || {
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
            c = now.max(c + 1);
            c
        };
        st.logs
            .entry((uid.to_string(), container.to_string()))
            .or_default()
            .write(stream, bytes, piece, share, rot, &mut clock);
    }
    st.clock_ns = c;
}

fn log_close(st: &mut State, uid: &str, container: &str) {
    let rot = st.kubelet.rotate_at;
    let mut c = st.clock_ns;
    {
        let mut clock = || {
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
            c = now.max(c + 1);
            c
        };
        st.logs
            .entry((uid.to_string(), container.to_string()))
            .or_default()
            .close(rot, &mut clock);
    }
    st.clock_ns = c;
}

/// Where a container is in its pod's spec and status.
#[derive(Clone)]
struct Slot {
    ns: String,
    pod: String,
    uid: String,
    init: bool,
    index: usize,
    name: String,
    spec: Value,
}

impl Slot {
    fn list(&self) -> &'static str {
        if self.init {
            "initContainerStatuses"
        } else {
            "containerStatuses"
        }
    }

    fn field_path(&self) -> String {
        let list = if self.init {
            "initContainers"
        } else {
            "containers"
        };
        format!("spec.{list}{{{}}}", self.name)
    }
}

/// Applies `f` to the pod if it still exists with this uid; false when it is gone.
fn update_pod(
    shared: &Shared,
    ns: &str,
    name: &str,
    uid: &str,
    f: impl FnOnce(&mut Value, &mut State),
) -> bool {
    shared.with(|st| {
        let Some(mut pod) = st.store.get(Kind::Pod, ns, name).cloned() else {
            return false;
        };
        if meta(&pod, "uid") != uid {
            return false;
        }
        f(&mut pod, st);
        st.store.put(Kind::Pod, pod);
        true
    })
}

fn set_state(shared: &Shared, s: &Slot, f: impl FnOnce(&mut Value)) -> bool {
    update_pod(shared, &s.ns, &s.pod, &s.uid, |pod, _| {
        let cs = &mut pod["status"][s.list()][s.index];
        if cs.is_object() {
            f(cs);
        }
    })
}

fn event(shared: &Shared, s: &Slot, etype: &str, reason: &str, message: &str) {
    shared.with(|st| {
        if let Some(pod) = st.store.get(Kind::Pod, &s.ns, &s.pod).cloned() {
            let fp = s.field_path();
            st.event(Recorder::Kubelet, &pod, Some(&fp), etype, reason, message);
        }
    });
}

fn hex_digest(seed: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `docker.io/library/busybox:latest` for `busybox`.
fn normalize(image: &str) -> String {
    let mut parts: Vec<&str> = image.splitn(2, '/').collect();
    let full = if parts.len() == 1
        || !(parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        if parts.len() == 1 {
            format!("docker.io/library/{image}")
        } else {
            parts.insert(0, "docker.io");
            parts.join("/")
        }
    } else {
        image.to_string()
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if last.contains(':') || last.contains('@') {
        full
    } else {
        format!("{full}:latest")
    }
}

/// Waits for a kill order.
async fn killed(mut rx: watch::Receiver<Option<Kill>>) -> Kill {
    loop {
        if let Some(k) = *rx.borrow_and_update() {
            return k;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sleeps `d` unless killed first (Some(kill)).
async fn pause(d: Duration, rx: &watch::Receiver<Option<Kill>>) -> Option<Kill> {
    tokio::select! {
        _ = tokio::time::sleep(d) => None,
        k = killed(rx.clone()) => Some(k),
    }
}

/// How a container ended.
enum Outcome {
    Exited {
        code: i64,
        oom: bool,
    },
    /// Never started (stopped while waiting: image, config).
    NotStarted,
}

/// Starts the kubelet's work on a pod bound to this node.
pub fn start_pod(shared: &Arc<Shared>, st: &mut State, pod: &Value) {
    let uid = meta(pod, "uid").to_string();
    let (tx, rx) = watch::channel(None);
    st.runtimes.insert(
        uid.clone(),
        PodRuntime {
            kill: tx,
            done: false,
        },
    );
    let ip = format!("10.244.0.{}", st.next_ip);
    st.next_ip += 1;
    // Initial status: sandbox ready, containers waiting.
    let mut p = pod.clone();
    let spec = p["spec"].clone();
    let inits: Vec<Value> = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mains: Vec<Value> = spec["containers"].as_array().cloned().unwrap_or_default();
    let names = |cs: &[Value]| -> Vec<String> {
        cs.iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let waiting = if inits.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let cstatus = |c: &Value| {
        json!({
            "name": c["name"], "image": c["image"], "imageID": "", "ready": false,
            "restartCount": 0, "started": false,
            "state": {"waiting": {"reason": waiting}}, "lastState": {},
        })
    };
    let now = now_rfc3339();
    let status = &mut p["status"];
    status["hostIP"] = json!("172.18.0.2");
    status["hostIPs"] = json!([{"ip": "172.18.0.2"}]);
    status["podIP"] = json!(ip);
    status["podIPs"] = json!([{"ip": ip}]);
    status["startTime"] = json!(now);
    let not_ready = format!(
        "containers with unready status: [{}]",
        names(&mains).join(" ")
    );
    let mut conditions = vec![
        json!({"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
    ];
    conditions.push(if inits.is_empty() {
        json!({"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": now})
    } else {
        json!({"type": "Initialized", "status": "False", "lastProbeTime": null, "lastTransitionTime": now,
               "reason": "ContainersNotInitialized",
               "message": format!("containers with incomplete status: [{}]", names(&inits).join(" "))})
    });
    for t in ["Ready", "ContainersReady"] {
        conditions.push(
            json!({"type": t, "status": "False", "lastProbeTime": null, "lastTransitionTime": now,
                               "reason": "ContainersNotReady", "message": not_ready}),
        );
    }
    let prior: Vec<Value> = status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] == "PodScheduled" || c["type"] == "DisruptionTarget")
        .collect();
    conditions.extend(prior);
    status["conditions"] = json!(conditions);
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(inits.iter().map(cstatus).collect::<Vec<_>>());
    }
    status["containerStatuses"] = json!(mains.iter().map(cstatus).collect::<Vec<_>>());
    st.store.put(Kind::Pod, p);
    let shared = shared.clone();
    let ns = meta(pod, "namespace").to_string();
    let name = meta(pod, "name").to_string();
    tokio::spawn(async move {
        run_pod(&shared, ns, name, uid.clone(), inits, mains, rx).await;
        shared.with(|st| {
            if let Some(r) = st.runtimes.get_mut(&uid) {
                r.done = true;
            }
        });
    });
}

async fn run_pod(
    shared: &Arc<Shared>,
    ns: String,
    pod: String,
    uid: String,
    inits: Vec<Value>,
    mains: Vec<Value>,
    rx: watch::Receiver<Option<Kill>>,
) {
    let slot = |init: bool, index: usize, c: &Value| Slot {
        ns: ns.clone(),
        pod: pod.clone(),
        uid: uid.clone(),
        init,
        index,
        name: c["name"].as_str().unwrap_or_default().to_string(),
        spec: c.clone(),
    };
    for (i, c) in inits.iter().enumerate() {
        match run_container(shared, slot(true, i, c), rx.clone()).await {
            Outcome::Exited { code: 0, .. } => {}
            _ => {
                finish_pod(shared, &ns, &pod, &uid, Some(false));
                return;
            }
        }
    }
    if !inits.is_empty() {
        update_pod(shared, &ns, &pod, &uid, |p, _| {
            set_condition(p, "Initialized", "True", None, None);
            for cs in p["status"]["containerStatuses"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if cs["state"]["waiting"].is_object() {
                    cs["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
                }
            }
        });
    }
    if rx.borrow().is_some() {
        finish_pod(shared, &ns, &pod, &uid, None);
        return;
    }
    let runs = mains
        .iter()
        .enumerate()
        .map(|(i, c)| run_container(shared, slot(false, i, c), rx.clone()));
    let outcomes = futures_util::future::join_all(runs).await;
    let all_ok = outcomes
        .iter()
        .all(|o| matches!(o, Outcome::Exited { code: 0, .. }));
    finish_pod(shared, &ns, &pod, &uid, Some(all_ok));
}

/// Sets (or adds) a pod condition; the transition time moves only when the status changes.
pub fn set_condition(
    pod: &mut Value,
    ctype: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let now = now_rfc3339();
    let conds = &mut pod["status"]["conditions"];
    if !conds.is_array() {
        *conds = json!([]);
    }
    let Some(list) = conds.as_array_mut() else {
        return;
    };
    let mut c =
        json!({"type": ctype, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    match list.iter_mut().find(|x| x["type"] == ctype) {
        Some(old) => {
            if old["status"] == status {
                c["lastTransitionTime"] = old["lastTransitionTime"].clone();
            }
            *old = c;
        }
        None => list.push(c),
    }
}

/// The pod's end: phase from the containers (unless already terminal), readiness off.
fn finish_pod(shared: &Shared, ns: &str, pod: &str, uid: &str, ok: Option<bool>) {
    update_pod(shared, ns, pod, uid, |p, _| {
        let terminal = matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        if !terminal {
            p["status"]["phase"] = json!(if ok == Some(true) {
                "Succeeded"
            } else {
                "Failed"
            });
        }
        set_condition(p, "Ready", "False", Some("PodCompleted"), None);
        set_condition(p, "ContainersReady", "False", Some("PodCompleted"), None);
        set_condition(p, "PodReadyToStartContainers", "False", None, None);
    });
}

/// Refreshes phase and readiness once a container started.
fn container_started(p: &mut Value) {
    let all: Vec<Value> = p["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
        p["status"]["phase"] = json!("Running");
    }
    let unready: Vec<String> = all
        .iter()
        .filter(|c| c["ready"] != true)
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    if unready.is_empty() {
        set_condition(p, "Ready", "True", None, None);
        set_condition(p, "ContainersReady", "True", None, None);
    } else {
        let m = format!("containers with unready status: [{}]", unready.join(" "));
        set_condition(p, "Ready", "False", Some("ContainersNotReady"), Some(&m));
        set_condition(
            p,
            "ContainersReady",
            "False",
            Some("ContainersNotReady"),
            Some(&m),
        );
    }
}

/// Waits in `reason` (with `message`) until killed or `retry` says to go on.
async fn wait_in(
    shared: &Shared,
    s: &Slot,
    reason: &str,
    message: &str,
    rx: &watch::Receiver<Option<Kill>>,
) -> bool {
    set_state(shared, s, |cs| {
        cs["state"] = json!({"waiting": {"reason": reason, "message": message}});
    });
    pause(Duration::from_millis(200), rx).await.is_none()
}

/// Pulls (or fails to pull) the image; false when stopped first.
async fn pull(shared: &Arc<Shared>, s: &Slot, rx: &watch::Receiver<Option<Kill>>) -> bool {
    let image = s.spec["image"].as_str().unwrap_or_default().to_string();
    let policy = s.spec["imagePullPolicy"]
        .as_str()
        .unwrap_or("IfNotPresent")
        .to_string();
    let step = shared.state.lock().kubelet.step_delay;
    if image
        .chars()
        .any(|c| c.is_ascii_uppercase() || c.is_whitespace())
    {
        let m = format!(
            "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format"
        );
        event(shared, s, "Warning", "InspectFailed", &m);
        event(shared, s, "Warning", "Failed", "Error: InvalidImageName");
        while wait_in(shared, s, "InvalidImageName", &m, rx).await {}
        return false;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let missing = shared.state.lock().kubelet.missing.contains(&image);
        if !missing {
            break;
        }
        if policy == "Never" {
            let m = format!("Container image \"{image}\" is not present with pull policy of Never");
            event(shared, s, "Warning", "ErrImageNeverPull", &m);
            if !wait_in(shared, s, "ErrImageNeverPull", &m, rx).await {
                return false;
            }
            continue;
        }
        let full = normalize(&image);
        event(
            shared,
            s,
            "Normal",
            "Pulling",
            &format!("Pulling image \"{image}\""),
        );
        if pause(step, rx).await.is_some() {
            return false;
        }
        let why = format!(
            "rpc error: code = NotFound desc = failed to pull and unpack image \"{full}\": failed to resolve reference \"{full}\": {full}: not found"
        );
        event(
            shared,
            s,
            "Warning",
            "Failed",
            &format!("Failed to pull image \"{image}\": {why}"),
        );
        event(shared, s, "Warning", "Failed", "Error: ErrImagePull");
        set_state(shared, s, |cs| {
            cs["state"] = json!({"waiting": {"reason": "ErrImagePull", "message": why}});
        });
        if pause(backoff, rx).await.is_some() {
            return false;
        }
        event(
            shared,
            s,
            "Normal",
            "BackOff",
            &format!("Back-off pulling image \"{image}\""),
        );
        event(shared, s, "Warning", "Failed", "Error: ImagePullBackOff");
        set_state(shared, s, |cs| {
            cs["state"] = json!({"waiting": {
                "reason": "ImagePullBackOff",
                "message": format!("Back-off pulling image \"{image}\": ErrImagePull: {why}"),
            }});
        });
        if pause(backoff, rx).await.is_some() {
            return false;
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    if policy == "Always" {
        event(
            shared,
            s,
            "Normal",
            "Pulling",
            &format!("Pulling image \"{image}\""),
        );
        if pause(step, rx).await.is_some() {
            return false;
        }
        let size = 2_000_000 + image.len() * 1000;
        event(
            shared,
            s,
            "Normal",
            "Pulled",
            &format!(
                "Successfully pulled image \"{image}\" in 5ms (5ms including waiting). Image size: {size} bytes."
            ),
        );
    } else {
        event(
            shared,
            s,
            "Normal",
            "Pulled",
            &format!("Container image \"{image}\" already present on machine"),
        );
    }
    true
}

/// A config reference the node cannot resolve (the fake stores no Secrets or ConfigMaps).
fn config_error(spec: &Value) -> Option<String> {
    let envs = spec["env"].as_array().into_iter().flatten();
    for e in envs {
        for (key, what) in [("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")] {
            let r = &e["valueFrom"][key];
            if r.is_object() && r["optional"] != true {
                return Some(format!(
                    "{what} \"{}\" not found",
                    r["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    for e in spec["envFrom"].as_array().into_iter().flatten() {
        for (key, what) in [("secretRef", "secret"), ("configMapRef", "configmap")] {
            let r = &e[key];
            if r.is_object() && r["optional"] != true {
                return Some(format!(
                    "{what} \"{}\" not found",
                    r["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    None
}

async fn run_container(
    shared: &Arc<Shared>,
    s: Slot,
    rx: watch::Receiver<Option<Kill>>,
) -> Outcome {
    if rx.borrow().is_some() {
        return Outcome::NotStarted;
    }
    if !pull(shared, &s, &rx).await {
        return Outcome::NotStarted;
    }
    if let Some(why) = config_error(&s.spec) {
        event(shared, &s, "Warning", "Failed", &format!("Error: {why}"));
        while wait_in(shared, &s, "CreateContainerConfigError", &why, &rx).await {}
        return Outcome::NotStarted;
    }
    let image = s.spec["image"].as_str().unwrap_or_default().to_string();
    let container_id = format!(
        "containerd://{}",
        hex_digest(&format!("{}/{}", s.uid, s.name))
    );
    let image_id = format!(
        "{}@sha256:{}",
        normalize(&image)
            .rsplit_once(':')
            .map_or(image.clone(), |(a, _)| a.to_string()),
        hex_digest(&image)
    );
    event(
        shared,
        &s,
        "Normal",
        "Created",
        &format!("Created container: {}", s.name),
    );
    let started_at = now_rfc3339();
    let init = s.init;
    let ok = update_pod(shared, &s.ns, &s.pod, &s.uid, |p, st| {
        let cs = &mut p["status"][s.list()][s.index];
        cs["state"] = json!({"running": {"startedAt": started_at}});
        cs["started"] = json!(true);
        cs["containerID"] = json!(container_id);
        cs["imageID"] = json!(image_id);
        if !init {
            cs["ready"] = json!(true);
            container_started(p);
        }
        st.logs.entry((s.uid.clone(), s.name.clone())).or_default();
    });
    if !ok {
        return Outcome::NotStarted;
    }
    event(
        shared,
        &s,
        "Normal",
        "Started",
        &format!("Started container {}", s.name),
    );
    let script = {
        let st = shared.state.lock();
        st.kubelet.images.get(&image).cloned()
    }
    .unwrap_or_else(|| {
        let words: Vec<String> = ["command", "args"]
            .iter()
            .flat_map(|k| s.spec[*k].as_array().cloned().unwrap_or_default())
            .filter_map(|w| w.as_str().map(str::to_string))
            .collect();
        Script::interpret(&words)
    });
    let (code, oom) = execute(shared, &s, &script, &image, &rx).await;
    let finished_at = now_rfc3339();
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let fallback = s.spec["terminationMessagePolicy"] == "FallbackToLogsOnError";
    update_pod(shared, &s.ns, &s.pod, &s.uid, |p, st| {
        log_close(st, &s.uid, &s.name);
        let message = if fallback && code != 0 {
            st.logs.get(&(s.uid.clone(), s.name.clone())).map(|l| {
                let text = l.text(None);
                let tail = &text[text.len().saturating_sub(2048)..];
                String::from_utf8_lossy(tail).into_owned()
            })
        } else {
            None
        };
        let cs = &mut p["status"][s.list()][s.index];
        let mut term = json!({
            "exitCode": code, "reason": reason, "startedAt": started_at,
            "finishedAt": finished_at, "containerID": container_id,
        });
        if let Some(m) = message.filter(|m| !m.is_empty()) {
            term["message"] = json!(m);
        }
        cs["state"] = json!({"terminated": term});
        cs["ready"] = json!(init && code == 0);
        cs["started"] = json!(false);
        if !init {
            container_started(p);
            if matches!(p["status"]["phase"].as_str(), Some("Running")) {
                p["status"]["phase"] = json!("Running");
            }
        }
    });
    Outcome::Exited { code, oom }
}

/// Runs a script in the container; (exit code, OOM-killed).
async fn execute(
    shared: &Arc<Shared>,
    s: &Slot,
    script: &Script,
    image: &str,
    rx: &watch::Receiver<Option<Kill>>,
) -> (i64, bool) {
    for step in script.steps() {
        let stopped = match step {
            ScriptStep::Print(stream, bytes) => {
                let ls = match stream {
                    Stream::Stderr => LogStream::Stderr,
                    _ => LogStream::Stdout,
                };
                shared.with(|st| log_write(st, &s.uid, &s.name, ls, bytes));
                if rx.borrow().is_some() {
                    killed(rx.clone()).await.into()
                } else {
                    None
                }
            }
            ScriptStep::Sleep(d) => pause(*d, rx).await,
            ScriptStep::Exit(st) => return (st.code, st.oom_killed),
            ScriptStep::Hang => Some(killed(rx.clone()).await),
        };
        if let Some(kill) = stopped {
            return stop(shared, s, image, kill).await;
        }
    }
    (0, false)
}

/// The kubelet stopping a running container: SIGTERM, the grace period, SIGKILL.
async fn stop(shared: &Arc<Shared>, s: &Slot, image: &str, kill: Kill) -> (i64, bool) {
    event(
        shared,
        s,
        "Normal",
        "Killing",
        &format!("Stopping container {}", s.name),
    );
    let (ignores, delay) = {
        let st = shared.state.lock();
        (
            st.kubelet.ignore_term.contains(image),
            st.kubelet.term_delay,
        )
    };
    if ignores || kill.grace.is_zero() {
        tokio::time::sleep(kill.grace).await;
        (137, false)
    } else {
        tokio::time::sleep(delay.min(kill.grace)).await;
        (143, false)
    }
}
