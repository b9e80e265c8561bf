//! A [`SandboxSpec`] in Docker's terms: the container the Docker backend creates (pure).
//!
//! Docker's spelling lives here only: bind strings (`volume:/path:ro`), `NanoCpus`, swap pinned
//! to memory, `--init`, network modes, the provisioning holder as entrypoint, and the sealed
//! task's `--dns` (see `spec::dns`).

use crate::runtime::ContainerSpec;
use crate::spec::{Network, SandboxSpec, SidecarMount};

/// The bind string of a prepared sidecar volume.
pub fn sidecar_bind(volume: &str, mount: &SidecarMount) -> String {
    if mount.read_write {
        format!("{volume}:{}", mount.mount_path)
    } else {
        format!("{volume}:{}:ro", mount.mount_path)
    }
}

/// The container for `spec`.
pub fn container_spec(spec: &SandboxSpec) -> ContainerSpec {
    let (entrypoint, cmd) = match &spec.hold {
        Some(image_entrypoint) => {
            let (e, c) = crate::spec::holder::held(image_entrypoint, &spec.command);
            (Some(e), c)
        }
        None => (None, spec.command.clone()),
    };
    let binds = spec
        .sidecars
        .iter()
        .map(|s| sidecar_bind(&s.source, &s.mount))
        .chain(spec.volumes.iter().cloned())
        .collect();
    let (network_mode, dns) = match &spec.network {
        Network::Engine(name) => (name.clone(), Vec::new()),
        Network::None => ("none".to_string(), Vec::new()),
        Network::Sealed { name, gateway } => (name.clone(), crate::spec::dns::sealed_dns(*gateway)),
    };
    ContainerSpec {
        image: spec.image.clone(),
        cmd,
        entrypoint,
        env: spec.env.clone(),
        working_dir: spec.workdir.clone(),
        binds,
        labels: spec.labels.clone(),
        nano_cpus: spec.limits.nano_cpus,
        memory_bytes: spec.limits.memory_bytes,
        memory_swap_bytes: spec.limits.memory_bytes,
        init: true,
        security: spec.security.clone(),
        network_mode,
        dns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Sidecar;
    use crate::spec::image::ImageRef;
    use crate::spec::policy::{Limits, Security};

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn sandbox() -> SandboxSpec {
        let sidecar = |path: &str, rw| Sidecar {
            mount: SidecarMount {
                image: ImageRef::parse("agent:1").unwrap_or_else(|e| panic!("{e}")),
                mount_path: path.into(),
                read_write: rw,
            },
            source: format!("vol{path}").replace('/', "-"),
        };
        SandboxSpec {
            image: "docker.io/library/busybox:latest".into(),
            command: strs(&["echo", "hi"]),
            hold: None,
            env: strs(&["TASK_ID=t-1"]),
            workdir: "/workspace".into(),
            labels: [("berth.managed".to_string(), "true".to_string())].into(),
            limits: Limits {
                nano_cpus: Some(2_000_000_000),
                memory_bytes: Some(3 << 30),
            },
            sidecars: vec![sidecar("/agent", false), sidecar("/cache", true)],
            volumes: strs(&["/host:/data:ro"]),
            security: Security::default(),
            network: Network::Engine("bridge".into()),
            steps: Vec::new(),
        }
    }

    #[test]
    fn a_sandbox_becomes_a_container_with_binds_limits_init_and_its_network() {
        let c = container_spec(&sandbox());
        assert_eq!(c.cmd, strs(&["echo", "hi"]));
        assert_eq!(c.entrypoint, None, "the image's entrypoint is kept");
        assert_eq!(
            c.binds,
            strs(&["vol-agent:/agent:ro", "vol-cache:/cache", "/host:/data:ro"]),
            "sidecar volumes first, then the operator's"
        );
        assert_eq!(c.nano_cpus, Some(2_000_000_000));
        assert_eq!(c.memory_bytes, Some(3 << 30));
        assert_eq!(c.memory_swap_bytes, c.memory_bytes, "no extra swap");
        assert!(c.init, "signals must reach the task's process tree");
        assert_eq!(c.working_dir, "/workspace");
        assert_eq!((c.network_mode.as_str(), c.dns.len()), ("bridge", 0));
        assert_eq!(
            c.labels.get("berth.managed").map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn a_held_sandbox_starts_under_the_holder_which_runs_the_image_entrypoint() {
        let spec = SandboxSpec {
            hold: Some(strs(&["/init"])),
            ..sandbox()
        };
        let c = container_spec(&spec);
        assert_eq!(
            c.entrypoint.as_deref().map(|e| &e[..2]),
            Some(&strs(&["/bin/sh", "-c"])[..])
        );
        assert_eq!(c.cmd, strs(&["/init", "echo", "hi"]));
    }

    #[test]
    fn egress_decides_the_network_and_a_sealed_task_resolves_only_through_its_gateway() {
        let none = container_spec(&SandboxSpec {
            network: Network::None,
            ..sandbox()
        });
        assert_eq!((none.network_mode.as_str(), none.dns.len()), ("none", 0));
        let sealed = container_spec(&SandboxSpec {
            network: Network::Sealed {
                name: "berth-egress-1".into(),
                gateway: "172.20.0.1".parse().unwrap_or_else(|e| panic!("{e}")),
            },
            ..sandbox()
        });
        assert_eq!(sealed.network_mode, "berth-egress-1");
        assert_eq!(sealed.dns, strs(&["172.20.0.1"]));
    }
}
