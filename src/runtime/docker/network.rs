//! The berth-managed network of egress-restricted tasks: a Docker bridge with no route out
//! (`internal`) and no traffic between its containers (`enable_icc=false`), whose gateway
//! address on the host is where berth's egress proxy listens.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::models::NetworkCreateRequest;

use super::{Docker, api, is_status};
use crate::runtime::{EgressNetwork, RuntimeError, SealedNetwork};
use crate::spec::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_WORKER};

/// Docker's option naming the bridge interface on the host (the firewall matches on it).
const BRIDGE_NAME: &str = "com.docker.network.bridge.name";

impl Docker {
    pub(super) async fn ensure_egress_network(
        &self,
        name: &str,
        bridge: &str,
        owner: &crate::spec::owner::Owner,
    ) -> Result<EgressNetwork, RuntimeError> {
        let inspected = match self.client.inspect_network(name, None).await {
            Ok(n) => n,
            Err(e) if is_status(&e, 404) => {
                let req = NetworkCreateRequest {
                    name: name.to_string(),
                    driver: Some("bridge".into()),
                    internal: Some(true),
                    enable_ipv6: Some(false),
                    options: Some(HashMap::from([
                        (BRIDGE_NAME.to_string(), bridge.to_string()),
                        (
                            "com.docker.network.bridge.enable_icc".to_string(),
                            "false".to_string(),
                        ),
                    ])),
                    labels: Some(owner.labels().into_iter().collect()),
                    ..NetworkCreateRequest::default()
                };
                match self.client.create_network(req).await {
                    Ok(_) => {}
                    // Created meanwhile by a concurrent task of this worker.
                    Err(e) if is_status(&e, 409) => {}
                    Err(e) => return Err(api("network create")(e)),
                }
                self.client
                    .inspect_network(name, None)
                    .await
                    .map_err(api("network inspect"))?
            }
            Err(e) => return Err(api("network inspect")(e)),
        };
        // A network of that name that is not ours, or not sealed, is never used.
        let opts = inspected.options.unwrap_or_default();
        let sealed = inspected.internal == Some(true)
            && opts
                .get("com.docker.network.bridge.enable_icc")
                .map(String::as_str)
                == Some("false")
            && opts.get(BRIDGE_NAME).map(String::as_str) == Some(bridge);
        if !sealed {
            return Err(RuntimeError::Api {
                op: "network inspect",
                reason: format!(
                    "network {name} exists but is not an internal bridge {bridge} without inter-container traffic; remove it (docker network rm {name}) and berth recreates it"
                ),
            });
        }
        let gateway = inspected
            .ipam
            .and_then(|i| i.config)
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| c.gateway?.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4))
            .ok_or_else(|| RuntimeError::Api {
                op: "network inspect",
                reason: format!("network {name} has no IPv4 gateway"),
            })?;
        Ok(EgressNetwork {
            name: name.to_string(),
            bridge: bridge.to_string(),
            gateway,
        })
    }

    pub(super) async fn sealed_networks(
        &self,
        worker_id: Option<&str>,
    ) -> Result<Vec<SealedNetwork>, RuntimeError> {
        let worker = match worker_id {
            Some(w) => format!("{LABEL_WORKER}={w}"),
            None => LABEL_WORKER.to_string(),
        };
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_MANAGED}=true"), worker],
        )]);
        let opts = bollard::query_parameters::ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let listed = self
            .client
            .list_networks(Some(opts))
            .await
            .map_err(api("network list"))?;
        let mut out = Vec::new();
        for n in listed {
            let Some(name) = n.name else { continue };
            // The list does not say who is attached: ask each one.
            let inspected = match self.client.inspect_network(&name, None).await {
                Ok(i) => i,
                Err(e) if is_status(&e, 404) => continue,
                Err(e) => return Err(api("network inspect")(e)),
            };
            out.push(SealedNetwork {
                bridge: inspected
                    .options
                    .as_ref()
                    .and_then(|o| o.get(BRIDGE_NAME).cloned()),
                instance: inspected
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_INSTANCE).cloned()),
                worker_id: inspected
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_WORKER).cloned())
                    .unwrap_or_default(),
                containers: inspected.containers.map_or(0, |c| c.len()),
                name,
            });
        }
        Ok(out)
    }

    pub(super) async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self.client.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api("network remove")(e)),
        }
    }

    pub(super) async fn container_address(
        &self,
        id: &str,
        network: &str,
    ) -> Result<Option<IpAddr>, RuntimeError> {
        let c = self
            .client
            .inspect_container(id, None)
            .await
            .map_err(api("container inspect"))?;
        Ok(c.network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .and_then(|a| a.parse().ok()))
    }
}
