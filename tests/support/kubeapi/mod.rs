//! A fake Kubernetes apiserver with a simulated control plane and kubelet, in process, over
//! real HTTPS: the Kubernetes backend (kube-rs) and the real berth binary are tested against
//! it end to end, without a cluster.
//!
//! [`FakeApiserver::start`] serves `https://127.0.0.1:PORT` (HTTP/1.1, a throwaway CA;
//! [`FakeApiserver::write_kubeconfig`] writes a kubeconfig trusting it, with the bearer
//! token). Objects are JSON as the real server writes them. Behind the API run the Job
//! controller, the garbage collector, the TTL-after-finished controller, the scheduler and
//! one node's kubelet, which runs containers as [`berth::backend::fake::Script`]s: the
//! container's `command ++ args` read by `Script::interpret` (a tiny shell), or a script
//! registered for the image ([`Kubelet::image`]).
//!
//! Semantics follow Kubernetes 1.33 (`gitVersion v1.33.0-fake`). **Where the fake simplifies
//! the real API:**
//!
//! * **One node** (`localhost`), one kubelet; no Nodes lifecycle, taints or node loss other
//!   than the disruptions [`FakeApiserver::disrupt`] simulates. Pod IPs are 10.244.0.N.
//! * **Served resources only:** Namespaces (get/list), Nodes (get/list), Pods (+`log`,
//!   `status`, `eviction`), Events (core/v1 only; no events.k8s.io endpoint), Services,
//!   batch/v1 Jobs (+`status`), networking.k8s.io/v1 NetworkPolicies, node.k8s.io/v1
//!   RuntimeClasses, authorization.k8s.io/v1 SelfSubjectAccessReviews (create), and
//!   metrics.k8s.io/v1beta1 PodMetrics (get/list, only with [`Kubelet::metrics`]). No
//!   Secrets or ConfigMaps: a container referring to one (env `valueFrom`, `envFrom`) waits in
//!   `CreateContainerConfigError`. No `exec`, `attach`, `portforward`, no protobuf, no
//!   HTTP/2, no Table output, no `managedFields`.
//! * **Patches:** `application/merge-patch+json` as RFC 7386; `strategic-merge-patch+json` is
//!   applied as a merge patch (lists are replaced, not merged by key; `$patch` directives
//!   ignored); `apply-patch+yaml` must be JSON, is applied as a merge patch (creating the
//!   object when absent) with no field ownership or conflicts; `json-patch+json` is answered
//!   415. A `metadata.resourceVersion` or `metadata.uid` in a patch body fences it (409).
//! * **Validation** covers names (DNS-1123, Jobs and Services ≤ 63), label keys and values,
//!   containers (names, images, duplicates), Job `restartPolicy`, counts and deadlines, Job
//!   immutability (`selector`, `completions`, `completionMode`, `podFailurePolicy`, the whole
//!   `template` — the real server allows some scheduling fields of a suspended Job's
//!   template), and the pod update rules (`activeDeadlineSeconds` only set or lowered;
//!   besides it only images and tolerations may change). Anything else is accepted as sent.
//! * **Job controller:** NonIndexed Jobs with `completions: 1`, `parallelism` 0 or 1; no
//!   `podFailurePolicy`, `successPolicy`, `backoffLimitPerIndex`, `managedBy` or
//!   `podReplacementPolicy` semantics (a replacement pod is created once the failed one is
//!   terminal). A failed pod is replaced at once (no 10 s exponential backoff); a refused pod
//!   creation (`FailedCreate`) is retried after 0.1 s doubling to 1.6 s. Pods are named
//!   `<job>-<5 chars>` and carry the `batch.kubernetes.io/job-tracking` finalizer until
//!   counted.
//! * **Deletion:** Jobs deleted without a `propagationPolicy` orphan their pods (the real
//!   default for batch/v1 through the API); `Foreground` keeps the Job (deletionTimestamp,
//!   finalizer `foregroundDeletion`) until its pods are gone; `Background` removes it and
//!   then its pods. Pods are deleted gracefully (`deletionTimestamp` = now + grace) unless
//!   unscheduled or terminal, and removed once the kubelet has stopped them and their
//!   finalizers are gone; `gracePeriodSeconds: 0` removes a pod at once (force) and its
//!   containers get SIGKILL (137). The garbage collector only follows Job → Pod ownership.
//! * **Watches and lists:** every change of every kind is kept (100 000 changes) until
//!   [`FakeApiserver::compact`]; a watch from an older resourceVersion gets one ERROR event
//!   (410 Expired) and ends. A watch without a resourceVersion (or "0") starts with synthetic
//!   ADDED events (`sendInitialEvents=true` adds the `k8s.io/initial-events-end` bookmark).
//!   Bookmarks come every 0.5 s ([`FakeApiserver::set_bookmark_interval`]), not ~1 min. No
//!   default watch timeout. `resourceVersionMatch` is ignored; lists always serve the
//!   current state, and `continue` tokens continue from the current state too (never 410).
//! * **Scheduler:** fits a pod if the node's labels satisfy its `nodeSelector` (merged with
//!   its RuntimeClass's `scheduling.nodeSelector`) and the summed requests of the pods bound
//!   to the node leave room (CPU and memory only; limits stand in for missing requests). An
//!   unschedulable pod is reconsidered on every change; no affinity, taints, priorities or
//!   real preemption (see [`FakeApiserver::disrupt`]).
//! * **Kubelet:** images are present unless [`Kubelet::missing_image`]; pulls take no time;
//!   `Always` pulls emit `Pulling`/`Pulled`, others "already present". Pull back-off is 0.1 s
//!   doubling to 2 s (real: 10 s to 5 min). `restartPolicy: Never` semantics for every pod
//!   (no container restarts, so `previous=true` is always 400). No probes, no lifecycle hooks,
//!   no sidecar (restartable init) containers. SIGTERM: a container ends 0.2 s later
//!   ([`Kubelet::term_delay`], capped by the grace period) with 143, or runs out the grace
//!   period and gets 137 when its image ignores TERM ([`Kubelet::ignore_term`]). A pod's
//!   `activeDeadlineSeconds` is checked every 50 ms against `status.startTime` (second
//!   precision, as the real kubelet). Status conditions: PodScheduled, PodReadyToStartContainers,
//!   Initialized, ContainersReady, Ready, DisruptionTarget. Evicted-by-kubelet pods stay with
//!   their logs.
//! * **Logs** (`pods/log`, see `logs.rs`): the CRI runtime buffers each stream up to a newline
//!   or the piece size ([`Kubelet::piece_size`], 16 KiB; each piece stamped apart as
//!   containerd does, or all with the line's time as Docker's json-file log does:
//!   [`Kubelet::pieces_share_timestamp`]), so output without a newline shows up
//!   only when the line completes, fills a piece, or the container ends. A stream's last
//!   unfinished line is written when the container ends and is returned by plain reads but
//!   **never by follow streams** (the kubelet's seek-back over an incomplete file line;
//!   containerd really writes it as a terminated `P` entry, which a real follow *would* send —
//!   to re-check on a cluster). Rotation ([`Kubelet::rotate_at`]) happens at the write that
//!   crosses the size (the real kubelet checks every 10 s), and a follow stream then goes on
//!   in the new file, losing what it had not read of the old one (or ends, with
//!   [`FollowEnd::AtRotation`]). `timestamps=true` prints the kubelet's `RFC3339NanoFixed`
//!   (nine digits, `2026-12-06T20:01:02.123400000Z`); Go's trimmed `RFC3339Nano` only with
//!   [`Kubelet::trimmed_timestamps`]. `tailLines` counts file entries (pieces count
//!   separately), as the kubelet does. `stream=` is ignored (merged output, no error) unless
//!   [`Kubelet::split_streams`], as an apiserver whose `PodLogsQuerySplitStreams` gate is off
//!   drops the field; with it, `stream` + `tailLines` is 422. With one regular container the
//!   container name may be omitted even when there are init containers (as the real server).
//! * **Events:** the kubelet's and the Job controller's are legacy core/v1 events (counted and
//!   aggregated; `eventTime` null); the scheduler's have `eventTime`/`action`/
//!   `reportingComponent` and null first/last timestamps, as events.k8s.io events read
//!   through core/v1 do; no event series, no rate limiting, and no "combined from similar
//!   events" aggregation (each `FailedCreate` names another generated pod, so each is an event
//!   of its own).
//! * **Auth:** one bearer token ([`FakeApiserver::token`]), user
//!   `system:serviceaccount:berth:berth`; RBAC is "everything allowed" minus
//!   [`FakeApiserver::deny`] rules, which both SelfSubjectAccessReviews and real requests
//!   obey.
//! * **Outages:** [`FakeApiserver::down`] refuses connections and cuts open ones; the
//!   controllers and the kubelet go on meanwhile (a real control plane's controllers would
//!   pause with the apiserver; the kubelet would keep pods running, as here).
//! * **NetworkPolicies** are stored, not enforced; [`FakeApiserver::set_network_policy_enforced`]
//!   only records what a canary should find (read it back with
//!   [`FakeApiserver::network_policy_enforced`]).

// Every test binary compiles the support module; most use none of this.
#![allow(unused_imports, clippy::unwrap_used, clippy::expect_used)]

mod api;
mod controllers;
mod events;
mod faults;
mod kubelet;
mod logs;
mod objects;
mod patch;
mod resources;
mod selectors;
mod server;
mod state;
mod status;
mod store;
mod validate;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use self::faults::{Fault, RequestRecord};
pub use self::kubelet::Kubelet;
pub use self::logs::{LogStream, format_ts};
pub use self::state::FollowEnd;
pub use self::status::ApiError;

use self::resources::{Kind, info};
use self::state::{Shared, State};
use self::store::meta;

/// The user the token authenticates (as RBAC messages name it).
pub const USER: &str = "system:serviceaccount:berth:berth";

/// How a pod is disrupted ([`FakeApiserver::disrupt`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Disruption {
    /// The Eviction API (`kubectl drain`): DisruptionTarget `EvictionByEvictionAPI`, graceful
    /// delete.
    Eviction,
    /// The scheduler preempting for a higher-priority pod: `PreemptionByScheduler`, a
    /// `Preempted` event, graceful delete.
    Preemption,
    /// A NoExecute taint: `DeletionByTaintManager`, graceful delete.
    TaintManager,
    /// The node is gone: `DeletionByPodGC`, the pod is removed at once (its containers are
    /// stopped without grace).
    PodGc,
    /// Node-pressure eviction by the kubelet: `TerminationByKubelet`, phase Failed with reason
    /// `Evicted`; the pod object stays.
    Kubelet(String),
}

/// The fake apiserver. Dropping it stops everything.
pub struct FakeApiserver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    pki: server::Pki,
    cut: Mutex<CancellationToken>,
    controllers: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.cut.lock().cancel();
        self.controllers.abort();
        let st = self.shared.state.lock();
        for r in st.runtimes.values() {
            let _ = r.kill.send(Some(state::Kill {
                grace: Duration::ZERO,
            }));
        }
    }
}

impl FakeApiserver {
    /// Starts serving on 127.0.0.1 (any port) with namespaces `default`, `kube-system` and
    /// `berth`, and one node `localhost`.
    pub async fn start() -> FakeApiserver {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shared = Shared::new(format!("fake-token-{}", uuid::Uuid::new_v4().simple()));
        shared.with(|st| {
            for ns in ["default", "kube-system", "berth"] {
                st.store.create(
                    Kind::Namespace,
                    json!({"metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(),
                                        "creationTimestamp": state::now_rfc3339(),
                                        "labels": {"kubernetes.io/metadata.name": ns}},
                           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                );
            }
            let labels = Value::Object(st.kubelet.node_labels.clone());
            st.store.create(
                Kind::Node,
                json!({"metadata": {"name": "localhost", "uid": uuid::Uuid::new_v4().to_string(),
                                    "creationTimestamp": state::now_rfc3339(), "labels": labels},
                       "spec": {}, "status": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                       "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                       "nodeInfo": {"kubeletVersion": "v1.33.0-fake", "containerRuntimeVersion": "containerd://2.0.0-fake"}}}),
            );
        });
        let pki = server::pki().expect("a test certificate");
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let cut = CancellationToken::new();
        server::serve(shared.clone(), listener, pki.server.clone(), cut.clone());
        let controllers = controllers::spawn(&shared);
        FakeApiserver {
            shared,
            addr,
            pki,
            cut: Mutex::new(cut),
            controllers,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token every request must carry.
    pub fn token(&self) -> String {
        self.shared.state.lock().token.clone()
    }

    /// The CA certificate (PEM) the server's certificate is signed by.
    pub fn ca_pem(&self) -> String {
        self.pki.ca_pem.clone()
    }

    /// The CA certificate (DER), for a rustls root store.
    pub fn ca_der(&self) -> rustls_pki_types::CertificateDer<'static> {
        self.pki.ca_der.clone()
    }

    /// A client TLS configuration (ring) trusting the fake.
    pub fn client_tls(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).expect("the fake's CA");
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// Writes a kubeconfig: cluster `fake` (server URL, `certificate-authority-data`), user
    /// `berth` (the token), context `fake` with `namespace`, current.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.pki.ca_pem.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: berth\n  user:\n    token: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: berth\n    namespace: {namespace}\ncurrent-context: fake\n",
            self.url(),
            self.token()
        );
        std::fs::write(path, text)
    }

    /// The node's kubelet knobs.
    pub fn kubelet(&self) -> Kubelet {
        Kubelet {
            shared: self.shared.clone(),
        }
    }

    /// The apiserver becomes unreachable: connections are refused, open ones (watches, log
    /// streams) are cut. Pods keep running.
    pub async fn down(&self) {
        self.cut.lock().cancel();
        // Let the accept loop drop the listener before anyone retries.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Serves again on the same port.
    pub async fn up(&self) {
        let mut tries = 0;
        let listener = loop {
            match server::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        let cut = CancellationToken::new();
        server::serve(
            self.shared.clone(),
            listener,
            self.pki.server.clone(),
            cut.clone(),
        );
        *self.cut.lock() = cut;
    }

    /// Adds a fault rule (checked in the order added, before RBAC and the handlers).
    pub fn fail(&self, rule: Fault) {
        self.shared.with(|st| st.faults.push(rule));
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared.with(|st| st.faults.clear());
    }

    /// RBAC refuses `verb` on `group`/`resource` ("*" for any; resource may be "pods/log"):
    /// requests get 403, SelfSubjectAccessReviews say not allowed.
    pub fn deny(&self, verb: &str, group: &str, resource: &str) {
        self.shared
            .with(|st| st.denied.push((verb.into(), group.into(), resource.into())));
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.state.lock().requests.clone()
    }

    fn all(&self, kind: Kind) -> Vec<Value> {
        self.shared.state.lock().store.list(kind, None)
    }

    pub fn jobs(&self) -> Vec<Value> {
        self.all(Kind::Job)
    }

    pub fn pods(&self) -> Vec<Value> {
        self.all(Kind::Pod)
    }

    pub fn events(&self) -> Vec<Value> {
        self.all(Kind::Event)
    }

    pub fn network_policies(&self) -> Vec<Value> {
        self.all(Kind::NetworkPolicy)
    }

    /// One object by kind plural ("jobs", "pods", …), namespace and name.
    pub fn object(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let res = resources::RESOURCES.iter().find(|r| r.plural == plural)?;
        self.shared
            .state
            .lock()
            .store
            .get(res.kind, ns, name)
            .cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().store.rv()
    }

    /// Forgets the watch history: watching from any earlier resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.shared.with(|st| st.store.compact());
    }

    /// How often watches asking for bookmarks get one.
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared.with(|st| st.bookmark_every = every);
    }

    /// A RuntimeClass `name` (handler `name`, no scheduling or overhead).
    pub fn add_runtime_class(&self, name: &str) {
        self.shared.with(|st| {
            st.store.put(
                Kind::RuntimeClass,
                json!({"metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(),
                                    "creationTimestamp": state::now_rfc3339()},
                       "handler": name}),
            );
        });
    }

    /// A ClusterIP Service with one TCP port.
    pub fn add_service(&self, ns: &str, name: &str, cluster_ip: &str, port: u16) {
        self.shared.with(|st| {
            st.store.put(
                Kind::Service,
                json!({"metadata": {"name": name, "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(),
                                    "creationTimestamp": state::now_rfc3339()},
                       "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                                "ports": [{"protocol": "TCP", "port": port, "targetPort": port}],
                                "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"},
                       "status": {"loadBalancer": {}}}),
            );
        });
    }

    /// A namespace besides the default ones.
    pub fn add_namespace(&self, name: &str) {
        self.shared.with(|st| {
            st.store.put(
                Kind::Namespace,
                json!({"metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(),
                                    "creationTimestamp": state::now_rfc3339()},
                       "status": {"phase": "Active"}}),
            );
        });
    }

    /// Whether the cluster's CNI enforces NetworkPolicies (for berth's canary; default true).
    pub fn set_network_policy_enforced(&self, on: bool) {
        self.shared.with(|st| st.netpol_enforced = on);
    }

    pub fn network_policy_enforced(&self) -> bool {
        self.shared.state.lock().netpol_enforced
    }

    /// Disrupts a pod as a cluster component would.
    pub fn disrupt(&self, ns: &str, pod: &str, how: Disruption) -> Result<(), ApiError> {
        self.shared.with(|st| disrupt(st, ns, pod, how))
    }

    /// The Eviction API on a pod of the default namespace `berth`.
    pub fn evict(&self, pod: &str) -> Result<(), ApiError> {
        self.disrupt("berth", pod, Disruption::Eviction)
    }

    /// Preemption of a pod of `berth`.
    pub fn preempt(&self, pod: &str) -> Result<(), ApiError> {
        self.disrupt("berth", pod, Disruption::Preemption)
    }

    /// What the TTL-after-finished controller does, now: deletes the Job (background
    /// propagation), whatever its TTL.
    pub fn expire_job(&self, ns: &str, job: &str) -> Result<(), ApiError> {
        self.shared.with(|st| api::expire(st, ns, job))
    }

    /// Waits (up to `within`) until `look` answers over the fake's state.
    pub async fn wait_for<T>(
        &self,
        within: Duration,
        mut look: impl FnMut(&FakeApiserver) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(t) = look(self) {
                return Some(t);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Applies a disruption to a pod.
fn disrupt(st: &mut State, ns: &str, name: &str, how: Disruption) -> Result<(), ApiError> {
    let Some(pod) = st.store.get(Kind::Pod, ns, name).cloned() else {
        return Err(status::not_found(info(Kind::Pod), name));
    };
    let (reason, message) = match &how {
        Disruption::Eviction => (
            "EvictionByEvictionAPI",
            "Eviction API: evicting".to_string(),
        ),
        Disruption::Preemption => (
            "PreemptionByScheduler",
            "default-scheduler: preempting to accommodate a higher priority pod".to_string(),
        ),
        Disruption::TaintManager => (
            "DeletionByTaintManager",
            "Taint manager: deleting due to NoExecute taint".to_string(),
        ),
        Disruption::PodGc => (
            "DeletionByPodGC",
            "PodGC: node no longer exists".to_string(),
        ),
        Disruption::Kubelet(m) => ("TerminationByKubelet", m.clone()),
    };
    let mut p = pod.clone();
    if !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
        kubelet::set_condition(
            &mut p,
            "DisruptionTarget",
            "True",
            Some(reason),
            Some(&message),
        );
    }
    if let Disruption::Kubelet(m) = &how {
        p["status"]["phase"] = json!("Failed");
        p["status"]["reason"] = json!("Evicted");
        p["status"]["message"] = json!(m);
    }
    let stored = st.store.put(Kind::Pod, p);
    if how == Disruption::Preemption {
        st.event(
            events::Recorder::Scheduler,
            &stored,
            None,
            "Normal",
            "Preempted",
            &format!(
                "Preempted by pod {} on node {}",
                uuid::Uuid::new_v4(),
                st.node_name
            ),
        );
    }
    let grace = stored["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    match how {
        Disruption::Kubelet(m) => {
            st.event(
                events::Recorder::Kubelet,
                &stored,
                None,
                "Warning",
                "Evicted",
                &m,
            );
            st.kill_pod(&stored, grace);
            Ok(())
        }
        Disruption::PodGc => {
            st.kill_pod(&stored, 0);
            if let Some(r) = st.runtimes.get_mut(meta(&stored, "uid")) {
                r.done = true;
            }
            st.store.remove(Kind::Pod, ns, name);
            Ok(())
        }
        _ => objects::delete(
            st,
            info(Kind::Pod),
            ns,
            name,
            &objects::DeleteOptions::default(),
        )
        .map(|_| ()),
    }
}
