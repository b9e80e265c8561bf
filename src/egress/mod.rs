//! Egress enforcement for tasks whose policy is `allowlist`: a sealed Docker network (no
//! route out, no traffic between tasks, the host's own addresses firewalled off), and
//! berth's proxy on its gateway as the only way out. The proxy attributes each connection to
//! a task by its address on that network and checks it against the task's egress.

pub mod firewall;
pub mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backend::{Backend, BackendError, SealedNetwork};
use crate::spec::egress::{Decision, Egress};
use crate::spec::owner::{Owner, Ownership};

/// Why the way out could not be opened: tasks that need it fail (never run unrestricted).
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot create the sealed egress network: {0}")]
    Network(#[from] BackendError),
    /// The backend makes no sealed networks.
    #[error("this backend cannot seal a task's network, so egress allowlists cannot be enforced")]
    Unsupported,
    #[error(transparent)]
    Firewall(#[from] firewall::FirewallError),
    #[error(
        "cannot listen for the egress proxy on {addr} ({reason}); is policy.egress.proxy_port taken?"
    )]
    Listen { addr: SocketAddr, reason: String },
}

/// What a task container needs to use the way out.
#[derive(Debug, Clone, PartialEq)]
pub struct Door {
    /// The sealed network's name.
    pub network: String,
    /// `http://GATEWAY:PORT`.
    pub proxy_url: String,
    /// The network's gateway on the host.
    pub gateway: IpAddr,
}

/// What one task did through the proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub allowed: u64,
    /// Denied destinations (`host:port`) and how often.
    pub denied: BTreeMap<String, u64>,
}

impl Usage {
    /// The transcript's summary line.
    pub fn summary(&self) -> String {
        let denied: u64 = self.denied.values().sum();
        if denied == 0 {
            return format!("egress: {} connections allowed, none denied", self.allowed);
        }
        let list: Vec<String> = self
            .denied
            .iter()
            .map(|(d, n)| format!("{d} ×{n}"))
            .collect();
        format!(
            "egress: {} connections allowed, {denied} denied by policy: {} (allow them in policy.egress.allow)",
            self.allowed,
            list.join(", ")
        )
    }
}

/// A task admitted to the proxy.
pub struct Admission {
    pub execution_id: String,
    pub egress: Egress,
    usage: Mutex<Usage>,
}

impl Admission {
    fn count(&self, dest: &str, d: Decision) {
        let mut u = self.usage.lock();
        match d {
            Decision::Allowed => u.allowed += 1,
            Decision::Denied => *u.denied.entry(dest.to_string()).or_default() += 1,
        }
    }
}

/// Tasks by their address on the sealed network.
#[derive(Default)]
pub struct Admissions {
    by_ip: Mutex<HashMap<IpAddr, Arc<Admission>>>,
    changed: watch::Sender<u64>,
}

impl Admissions {
    /// The task at `ip`, waiting up to `patience` for it to be admitted (a task can connect
    /// before berth has read its address).
    async fn wait_for(&self, ip: IpAddr, patience: Duration) -> Option<Arc<Admission>> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(a) = self.by_ip.lock().get(&ip) {
                return Some(a.clone());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}

/// The host's way out for allowlisted tasks: opened on first use, shared by all tasks.
pub struct Gate {
    runtime: Arc<dyn Backend>,
    owner: Owner,
    port: u16,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
    door: tokio::sync::Mutex<Option<Door>>,
    admissions: Arc<Admissions>,
}

/// Short, stable name part for this instance's network and bridge (an interface name has at
/// most 15 bytes). Per instance, not per worker id: two berths sharing a worker id each have
/// their own network, so one tearing its down never cuts the other's tasks off.
fn tag(owner: &Owner) -> String {
    let key = format!("{}\n{}", owner.worker_id, owner.instance);
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl Gate {
    /// A gate for `owner`'s tasks; nothing is created until [`Gate::open`].
    pub fn new(
        runtime: Arc<dyn Backend>,
        owner: Owner,
        port: u16,
        metrics: Arc<crate::metrics::Metrics>,
        stop: CancellationToken,
    ) -> Self {
        Gate {
            runtime,
            owner,
            port,
            metrics,
            stop,
            door: tokio::sync::Mutex::new(None),
            admissions: Arc::new(Admissions::default()),
        }
    }

    /// The network name this instance's allowlisted tasks use.
    pub fn network_name(owner: &Owner) -> String {
        format!("berth-egress-{}", tag(owner))
    }

    /// The host interface of that network (what the firewall chain matches on).
    pub fn bridge_name(owner: &Owner) -> String {
        format!("berth-{}", tag(owner))
    }

    /// Tears down this instance's sealed networks (and their firewall chains) that no
    /// container uses: called when the worker stops, so a berth that stops for good leaves
    /// nothing behind; one still used by a detached task (`preserve`) stays for the next start.
    pub async fn close(&self) {
        *self.door.lock().await = None;
        match sweep(self.runtime.as_ref(), &self.owner, false).await {
            Ok(swept) => swept.log(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the sealed egress networks to remove them; berth verify names what is left")
            }
        }
    }

    /// Opens the way out (once): the sealed network, the host firewall, the proxy.
    pub async fn open(&self) -> Result<Door, EgressError> {
        let mut door = self.door.lock().await;
        if let Some(d) = door.as_ref() {
            return Ok(d.clone());
        }
        let sealing = self.runtime.sealing().ok_or(EgressError::Unsupported)?;
        let net = sealing
            .ensure_network(
                &Self::network_name(&self.owner),
                &Self::bridge_name(&self.owner),
                &self.owner,
            )
            .await?;
        let (bridge, gateway, port) = (net.bridge.clone(), net.gateway, self.port);
        tokio::task::spawn_blocking(move || firewall::seal(&bridge, gateway, port))
            .await
            .map_err(|e| BackendError::Api {
                op: "firewall",
                reason: e.to_string(),
            })??;
        let addr = SocketAddr::new(net.gateway, self.port);
        let listener =
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| EgressError::Listen {
                    addr,
                    reason: e.to_string(),
                })?;
        info!(network = %net.name, proxy = %addr, "egress proxy listening on the sealed network");
        tokio::spawn(proxy::serve(
            listener,
            self.admissions.clone(),
            self.metrics.clone(),
            self.stop.clone(),
        ));
        let d = Door {
            network: net.name,
            proxy_url: format!("http://{addr}"),
            gateway: net.gateway,
        };
        *door = Some(d.clone());
        Ok(d)
    }

    /// Lets the task at `ip` use the proxy under `egress`.
    pub fn admit(&self, ip: IpAddr, execution_id: &str, egress: Egress) {
        self.admissions.by_ip.lock().insert(
            ip,
            Arc::new(Admission {
                execution_id: execution_id.to_string(),
                egress,
                usage: Mutex::new(Usage::default()),
            }),
        );
        self.admissions.changed.send_modify(|v| *v += 1);
    }

    /// Ends the task's admission; what it did.
    pub fn release(&self, ip: IpAddr) -> Option<Usage> {
        let a = self.admissions.by_ip.lock().remove(&ip)?;
        let u = a.usage.lock().clone();
        Some(u)
    }
}

/// Why a sealed network of this worker id is left in place.
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    /// Containers still use it (detached tasks of a `preserve` shutdown, or running ones).
    InUse(usize),
    /// Another berth instance's (same worker id, another `state_dir`).
    Foreign(String),
    /// Removing it failed.
    Failed(String),
}

/// What a sweep of the worker id's sealed networks did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweep {
    /// Networks removed (dry: that would be), with their firewall chains.
    pub removed: Vec<String>,
    /// Networks left, and why.
    pub kept: Vec<(String, Kept)>,
}

impl Sweep {
    fn log(&self) {
        if !self.removed.is_empty() {
            info!(networks = ?self.removed, "removed sealed egress networks no task uses, with their firewall chains");
        }
        for (name, why) in &self.kept {
            match why {
                Kept::InUse(n) => {
                    info!(network = %name, containers = n, "sealed egress network kept: task containers still use it")
                }
                Kept::Foreign(i) => {
                    tracing::debug!(network = %name, instance = %i, "another berth instance's sealed network")
                }
                Kept::Failed(e) => {
                    tracing::warn!(network = %name, error = %e, "cannot remove the sealed egress network; berth verify names it")
                }
            }
        }
    }
}

/// Which of the worker id's sealed networks this instance may remove (pure): its own and
/// those of a berth before instance labels, when no container uses them.
pub fn plan(owner: &Owner, net: &SealedNetwork) -> Result<(), Kept> {
    if let Ownership::Other(i) = owner.ownership(net.instance.as_deref()) {
        return Err(Kept::Foreign(i));
    }
    if net.containers > 0 {
        return Err(Kept::InUse(net.containers));
    }
    Ok(())
}

/// Removes (unless `dry`) the worker id's sealed networks that [`plan`] allows, each with the
/// firewall chain of its bridge.
pub async fn sweep(runtime: &dyn Backend, owner: &Owner, dry: bool) -> Result<Sweep, BackendError> {
    // A backend without sealed networks has none to sweep.
    let Some(runtime) = runtime.sealing() else {
        return Ok(Sweep::default());
    };
    let mut out = Sweep::default();
    for net in runtime.networks(Some(&owner.worker_id)).await? {
        if let Err(why) = plan(owner, &net) {
            out.kept.push((net.name, why));
            continue;
        }
        if !dry {
            if let Err(e) = runtime.remove_network(&net.name).await {
                out.kept.push((net.name, Kept::Failed(e.to_string())));
                continue;
            }
            if let Some(bridge) = net.bridge.clone() {
                let _ = tokio::task::spawn_blocking(move || firewall::unseal(&bridge)).await;
            }
        }
        out.removed.push(net.name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_each_denied_destination() {
        let mut u = Usage {
            allowed: 3,
            ..Usage::default()
        };
        assert_eq!(u.summary(), "egress: 3 connections allowed, none denied");
        u.denied.insert("example.com:443".into(), 2);
        u.denied.insert("10.0.0.9:80".into(), 1);
        assert_eq!(
            u.summary(),
            "egress: 3 connections allowed, 3 denied by policy: 10.0.0.9:80 ×1, example.com:443 ×2 (allow them in policy.egress.allow)"
        );
    }

    #[test]
    fn names_fit_an_interface_name_and_differ_per_instance() {
        let o = |w: &str, i: &str| Owner::new(w, i);
        let long = o(
            "a-very-long-worker-id-that-goes-on",
            "0123456789abcdef0123456789abcdef",
        );
        assert_eq!(Gate::bridge_name(&long).len(), 14);
        assert_eq!(tag(&o("w", "i")), tag(&o("w", "i")));
        assert_ne!(tag(&o("w1", "i")), tag(&o("w2", "i")));
        assert_ne!(
            tag(&o("w", "i1")),
            tag(&o("w", "i2")),
            "two berths with one worker id have their own networks"
        );
    }

    #[test]
    fn only_unused_networks_of_this_instance_or_unlabelled_ones_are_swept() {
        let me = Owner::new("w", "mine");
        let net = |instance: Option<&str>, containers| SealedNetwork {
            name: "n".into(),
            worker_id: "w".into(),
            bridge: Some("berth-x".into()),
            instance: instance.map(str::to_string),
            containers,
        };
        assert_eq!(plan(&me, &net(Some("mine"), 0)), Ok(()));
        assert_eq!(
            plan(&me, &net(None, 0)),
            Ok(()),
            "a berth before instance labels"
        );
        assert_eq!(plan(&me, &net(Some("mine"), 2)), Err(Kept::InUse(2)));
        assert_eq!(
            plan(&me, &net(Some("theirs"), 0)),
            Err(Kept::Foreign("theirs".into()))
        );
    }
}
