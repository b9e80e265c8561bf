//! Operator policy: which images may run, what every container is allowed to do, how much it
//! may use, and how long it may take. Pure: evaluated before anything is pulled or created, and
//! every refusal names the rule and the value.

use std::time::Duration;

use crate::failure::FailureReason;
use crate::protocol::InstanceShape;
use crate::spec::image::ImageRef;

/// Settings every task container gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Security {
    /// `no-new-privileges` (setuid binaries cannot gain privileges).
    pub no_new_privileges: bool,
    /// Capabilities dropped (`ALL` allowed).
    pub cap_drop: Vec<String>,
    /// Capabilities added back.
    pub cap_add: Vec<String>,
    /// Process limit (fork bombs); `None` = engine default.
    pub pids_limit: Option<i64>,
    /// Read-only root filesystem (volumes and `/workspace` binds stay writable).
    pub read_only_rootfs: bool,
    /// `user[:group]` inside the container; `None` = the image's.
    pub user: Option<String>,
    /// OCI runtime (e.g. `runsc`); `None` = the engine default.
    pub runtime: Option<String>,
    /// Network mode: `bridge` (default), `none`, or a named network.
    pub network: String,
    /// In-memory filesystems: (path, mount options).
    pub tmpfs: Vec<(String, String)>,
}

/// A named set of security settings (`policy.security.profile`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Profile {
    /// The settings as configured.
    #[default]
    Default,
    /// Non-root, no capabilities, read-only root with writable `/tmp` and workspace,
    /// no-new-privileges, a pids limit, and egress no wider than `allowlist`.
    Strict,
}

/// The user a strict container runs as when neither the operator nor the image names one.
pub const STRICT_USER: &str = "65534:65534";
/// The pids limit of a strict container unless the operator's is lower.
pub const STRICT_PIDS: i64 = 4096;

impl Security {
    /// These settings hardened by `profile` for an image whose `USER` is `image_user`. Pure.
    pub fn hardened(&self, profile: Profile, image_user: &str, workdir: &str) -> Security {
        if profile == Profile::Default {
            return self.clone();
        }
        let user = self.user.clone().or_else(|| {
            // A numeric user the image chose is kept; root (or a name, which may be root) is
            // replaced.
            let u = image_user.split(':').next().unwrap_or_default();
            let numeric_non_root = !u.is_empty() && u.parse::<u32>().is_ok_and(|n| n != 0);
            Some(if numeric_non_root {
                image_user.to_string()
            } else {
                STRICT_USER.to_string()
            })
        });
        let (uid, gid) = user
            .as_deref()
            .map(|u| {
                let mut p = u.split(':');
                let uid = p.next().unwrap_or("65534").to_string();
                let gid = p.next().map_or_else(|| uid.clone(), str::to_string);
                (uid, gid)
            })
            .unwrap_or_default();
        let owned = |mode: &str| {
            if uid.parse::<u32>().is_ok() && gid.parse::<u32>().is_ok() {
                format!("rw,exec,nosuid,nodev,mode={mode},uid={uid},gid={gid}")
            } else {
                format!("rw,exec,nosuid,nodev,mode={mode}")
            }
        };
        let mut tmpfs = vec![
            (
                "/tmp".to_string(),
                "rw,exec,nosuid,nodev,mode=1777".to_string(),
            ),
            (workdir.to_string(), owned("0755")),
        ];
        if workdir != crate::spec::WORKDIR && workdir.starts_with(crate::spec::WORKDIR) {
            tmpfs.push((crate::spec::WORKDIR.to_string(), owned("0755")));
        }
        tmpfs.sort();
        tmpfs.dedup();
        Security {
            no_new_privileges: true,
            cap_drop: vec!["ALL".to_string()],
            cap_add: Vec::new(),
            pids_limit: Some(self.pids_limit.map_or(STRICT_PIDS, |p| p.min(STRICT_PIDS))),
            read_only_rootfs: true,
            user,
            runtime: self.runtime.clone(),
            network: self.network.clone(),
            tmpfs,
        }
    }
}

impl Default for Security {
    fn default() -> Self {
        Security {
            no_new_privileges: true,
            cap_drop: Vec::new(),
            cap_add: Vec::new(),
            pids_limit: Some(4096),
            read_only_rootfs: false,
            user: None,
            runtime: None,
            network: "bridge".to_string(),
            tmpfs: Vec::new(),
        }
    }
}

/// CPU and memory amounts (either may be unset).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// CPUs (fractions allowed).
    pub cpus: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
}

/// The operator's policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Glob patterns over normalised references; empty = any image.
    pub allowed_images: Vec<String>,
    /// Container settings.
    pub security: Security,
    /// Reservation when the assignment has no instance shape.
    pub default_resources: Resources,
    /// Upper bound for any request.
    pub max_resources: Resources,
    /// Time limit of every task (a berth/1 `timeout_secs` may only shorten it).
    pub timeout: Duration,
    /// OCI runtimes an environment may ask for besides `security.runtime`.
    pub allowed_runtimes: Vec<String>,
    /// Where tasks may connect to (`mode` and the operator's `allow` list).
    pub egress: crate::spec::egress::Egress,
    /// Port of berth's egress proxy on the sealed network's gateway.
    pub egress_proxy_port: u16,
    /// Security profile applied on top of `security`.
    pub profile: Profile,
}

/// Default port of the egress proxy (the customary proxy port).
pub const DEFAULT_EGRESS_PROXY_PORT: u16 = 3128;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_images: Vec::new(),
            security: Security::default(),
            default_resources: Resources::default(),
            max_resources: Resources::default(),
            timeout: Duration::from_secs(8 * 3600),
            allowed_runtimes: Vec::new(),
            egress: crate::spec::egress::Egress::default(),
            egress_proxy_port: DEFAULT_EGRESS_PROXY_PORT,
            profile: Profile::Default,
        }
    }
}

/// A policy refusal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The image matches no `allowed_images` pattern.
    #[error(
        "image {image} is not allowed by policy allowed_images ({patterns}); ask the operator to allow it or use an allowed image"
    )]
    ImageNotAllowed {
        /// What was asked for (sidecar images say so).
        image: String,
        /// The configured patterns.
        patterns: String,
    },
    /// An environment asks for an OCI runtime the policy does not allow.
    #[error(
        "the environment asks for OCI runtime {asked} but policy allows {allowed}; use an allowed runtime or ask the operator to add it to policy.security.allowed_runtimes"
    )]
    RuntimeNotAllowed {
        /// The runtime asked for.
        asked: String,
        /// What may be used.
        allowed: String,
    },
    /// A request exceeds `max_resources`.
    #[error(
        "the task asks for {asked} but policy max_resources.{axis} allows at most {max}; request less or ask the operator to raise the limit"
    )]
    TooLarge {
        /// `cpus` or `memory`.
        axis: &'static str,
        /// The request.
        asked: String,
        /// The limit.
        max: String,
    },
}

impl PolicyError {
    /// The protocol failure reason.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            PolicyError::ImageNotAllowed { .. } => FailureReason::InvalidImage,
            PolicyError::TooLarge { .. } | PolicyError::RuntimeNotAllowed { .. } => {
                FailureReason::ContainerCreate
            }
        }
    }
}

impl Policy {
    /// Every OCI runtime a task may run under: `security.runtime` (or the engine default when
    /// unset, shown as `None`) and `allowed_runtimes`.
    pub fn runtimes(&self) -> Vec<Option<&str>> {
        let mut v = vec![self.security.runtime.as_deref()];
        for r in &self.allowed_runtimes {
            if !v.contains(&Some(r.as_str())) {
                v.push(Some(r));
            }
        }
        v
    }

    /// The runtime of a task whose environment asks for `asked`: the policy's own when it asks
    /// for none; refused unless the policy allows it (an environment never widens policy).
    pub fn runtime_for(&self, asked: Option<&str>) -> Result<Option<String>, PolicyError> {
        let Some(asked) = asked.filter(|a| !a.is_empty()) else {
            return Ok(self.security.runtime.clone());
        };
        if self.runtimes().contains(&Some(asked)) {
            return Ok(Some(asked.to_string()));
        }
        let allowed: Vec<&str> = self
            .runtimes()
            .into_iter()
            .map(|r| r.unwrap_or("the engine default"))
            .collect();
        Err(PolicyError::RuntimeNotAllowed {
            asked: asked.to_string(),
            allowed: allowed.join(", "),
        })
    }
}

/// The first runtime the policy may use that the engine does not have registered: berth
/// refuses to start (or reload) rather than fall back to another runtime.
pub fn unregistered<'a>(policy: &'a Policy, registered: &[String]) -> Option<&'a str> {
    policy
        .runtimes()
        .into_iter()
        .flatten()
        .find(|r| !registered.iter().any(|x| x == r))
}

/// Glob match: `*` matches within one path segment (no `/`), `**` across segments, `?` one
/// character other than `/`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                (0..=t.len()).any(|i| go(rest, &t[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                let mut i = 0;
                loop {
                    if go(rest, &t[i..]) {
                        return true;
                    }
                    if i >= t.len() || t[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(b'?') => !t.is_empty() && t[0] != b'/' && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// Container limits derived from the request and the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU limit in 1e-9 CPUs.
    pub nano_cpus: Option<i64>,
    /// Memory limit in bytes (swap pinned to it).
    pub memory_bytes: Option<i64>,
}

fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g.fract() == 0.0 {
        format!("{g:.0} GiB")
    } else {
        format!("{bytes} bytes")
    }
}

impl Policy {
    /// Checks an image against `allowed_images` (`what` says which image it is).
    pub fn check_image(&self, image: &ImageRef, what: &str) -> Result<(), PolicyError> {
        if self.allowed_images.is_empty() {
            return Ok(());
        }
        let name = image.to_string();
        if self.allowed_images.iter().any(|p| glob_match(p, &name)) {
            return Ok(());
        }
        Err(PolicyError::ImageNotAllowed {
            image: if what.is_empty() {
                name
            } else {
                format!("{name} ({what})")
            },
            patterns: self.allowed_images.join(", "),
        })
    }

    /// What a task reserves. Per axis: the instance shape › the environment's `resources` › `default_resources`.
    pub fn reservation(&self, shape: Option<InstanceShape>, env: Option<&Resources>) -> Resources {
        let shape = shape.unwrap_or_default();
        let env = env.copied().unwrap_or_default();
        let cpus = shape.vcpus.filter(|c| *c > 0).map(|c| c as f64);
        let memory = shape
            .memory_gb
            .filter(|g| *g > 0)
            .map(|g| (g as u64).saturating_mul(1 << 30));
        Resources {
            cpus: cpus.or(env.cpus).or(self.default_resources.cpus),
            memory: memory.or(env.memory).or(self.default_resources.memory),
        }
    }

    /// The container limits for a task, refused when the request exceeds `max_resources`.
    /// Without a request on an axis, `max_resources` becomes the limit.
    pub fn limits(
        &self,
        shape: Option<InstanceShape>,
        env: Option<&Resources>,
    ) -> Result<Limits, PolicyError> {
        let r = self.reservation(shape, env);
        if let (Some(asked), Some(max)) = (r.cpus, self.max_resources.cpus)
            && asked > max
        {
            return Err(PolicyError::TooLarge {
                axis: "cpus",
                asked: format!("{asked} CPUs"),
                max: format!("{max} CPUs"),
            });
        }
        if let (Some(asked), Some(max)) = (r.memory, self.max_resources.memory)
            && asked > max
        {
            return Err(PolicyError::TooLarge {
                axis: "memory",
                asked: gib(asked),
                max: gib(max),
            });
        }
        let cpus = r.cpus.or(self.max_resources.cpus);
        let memory = r.memory.or(self.max_resources.memory);
        Ok(Limits {
            nano_cpus: cpus.map(|c| (c * 1e9).round() as i64),
            memory_bytes: memory.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        })
    }

    /// The time limit of a task: the policy's, shortened by a berth/1 `timeout_secs`.
    pub fn timeout(&self, timeout_secs: Option<u64>, berth: bool) -> Option<Duration> {
        let task = timeout_secs
            .filter(|t| berth && *t > 0)
            .map(Duration::from_secs);
        let policy = Some(self.timeout).filter(|t| !t.is_zero());
        match (task, policy) {
            (Some(t), Some(p)) => Some(t.min(p)),
            (t, p) => t.or(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            (
                "registry.example.com/**",
                "registry.example.com/team/app:1.0",
                true,
            ),
            (
                "registry.example.com/**",
                "docker.io/library/ubuntu:22.04",
                false,
            ),
            (
                "registry.example.com/*",
                "registry.example.com/team/app:1.0",
                false,
            ),
            (
                "registry.example.com/*/*",
                "registry.example.com/team/app:1.0",
                true,
            ),
            (
                "docker.io/library/ubuntu:*",
                "docker.io/library/ubuntu:22.04",
                true,
            ),
            (
                "docker.io/library/ubuntu:*",
                "docker.io/library/ubuntu-evil:1",
                false,
            ),
            (
                "docker.io/library/ubuntu:2?.04",
                "docker.io/library/ubuntu:22.04",
                true,
            ),
            ("**", "anything/at/all:1", true),
            ("exact:1", "exact:1", true),
            ("exact:1", "exact:12", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
    }

    fn img(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn image_refusals_name_the_rule_and_the_value() {
        let p = Policy {
            allowed_images: vec!["registry.example.com/**".into()],
            ..Policy::default()
        };
        assert_eq!(
            p.check_image(&img("registry.example.com/a/b:1"), ""),
            Ok(())
        );
        let e = p.check_image(&img("ubuntu:22.04"), "sidecar");
        let msg = e
            .as_ref()
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(
            msg.contains("docker.io/library/ubuntu:22.04 (sidecar)")
                && msg.contains("allowed_images (registry.example.com/**)"),
            "{msg}"
        );
        assert_eq!(
            e.map_err(|e| e.failure_reason()),
            Err(FailureReason::InvalidImage)
        );
        assert_eq!(Policy::default().check_image(&img("anything"), ""), Ok(()));
    }

    #[test]
    fn resources_default_cap_and_refuse() {
        let p = Policy {
            default_resources: Resources {
                cpus: Some(1.5),
                memory: Some(2 << 30),
            },
            max_resources: Resources {
                cpus: Some(4.0),
                memory: Some(8 << 30),
            },
            ..Policy::default()
        };
        assert_eq!(
            p.limits(None, None),
            Ok(Limits {
                nano_cpus: Some(1_500_000_000),
                memory_bytes: Some(2 << 30)
            })
        );
        let shape = |v, m| {
            Some(InstanceShape {
                vcpus: Some(v),
                memory_gb: Some(m),
            })
        };
        assert_eq!(
            p.limits(shape(4, 8), None),
            Ok(Limits {
                nano_cpus: Some(4_000_000_000),
                memory_bytes: Some(8 << 30)
            })
        );
        let e = p.limits(shape(8, 1), None).map_err(|e| e.to_string());
        assert!(
            e.as_ref().is_err_and(|m| m.contains("8 CPUs")
                && m.contains("max_resources.cpus")
                && m.contains("4 CPUs")),
            "{e:?}"
        );
        let e = p.limits(shape(1, 16), None).map_err(|e| e.to_string());
        assert!(
            e.as_ref().is_err_and(|m| m.contains("16 GiB")
                && m.contains("max_resources.memory")
                && m.contains("8 GiB")),
            "{e:?}"
        );
        // Non-positive axes fall back to the defaults; with no default the max is the limit.
        let only_max = Policy {
            max_resources: Resources {
                cpus: Some(2.0),
                memory: None,
            },
            ..Policy::default()
        };
        assert_eq!(
            only_max.limits(shape(0, -1), None),
            Ok(Limits {
                nano_cpus: Some(2_000_000_000),
                memory_bytes: None
            })
        );
        assert_eq!(Policy::default().limits(None, None), Ok(Limits::default()));
        // An environment's resources sit between the shape and the defaults, and are capped.
        let env = Resources {
            cpus: Some(3.0),
            memory: None,
        };
        assert_eq!(
            p.reservation(None, Some(&env)),
            Resources {
                cpus: Some(3.0),
                memory: Some(2 << 30)
            }
        );
        assert_eq!(
            p.reservation(shape(2, 0), Some(&env)),
            Resources {
                cpus: Some(2.0),
                memory: Some(2 << 30)
            }
        );
        let huge = Resources {
            cpus: None,
            memory: Some(9 << 30),
        };
        assert!(p.limits(None, Some(&huge)).is_err());
    }

    #[test]
    fn timeouts_only_shorten() {
        let p = Policy {
            timeout: Duration::from_secs(7200),
            ..Policy::default()
        };
        assert_eq!(p.timeout(None, true), Some(Duration::from_secs(7200)));
        assert_eq!(p.timeout(Some(60), true), Some(Duration::from_secs(60)));
        assert_eq!(
            p.timeout(Some(99999), true),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            p.timeout(Some(60), false),
            Some(Duration::from_secs(7200)),
            "timeout_secs is berth/1 only"
        );
        let none = Policy {
            timeout: Duration::ZERO,
            ..Policy::default()
        };
        assert_eq!(none.timeout(None, true), None);
        assert_eq!(none.timeout(Some(5), true), Some(Duration::from_secs(5)));
    }

    fn with_runtimes(runtime: Option<&str>, allowed: &[&str]) -> Policy {
        Policy {
            security: Security {
                runtime: runtime.map(String::from),
                ..Security::default()
            },
            allowed_runtimes: allowed.iter().map(|s| s.to_string()).collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn an_environment_may_pick_only_a_runtime_the_policy_allows() {
        type Case<'a> = (
            Option<&'a str>,
            &'a [&'a str],
            Option<&'a str>,
            Result<Option<&'a str>, ()>,
        );
        let cases: &[Case] = &[
            // policy runtime, allowed, asked → result
            (None, &[], None, Ok(None)),
            (Some("runsc"), &[], None, Ok(Some("runsc"))),
            (Some("runsc"), &[], Some("runsc"), Ok(Some("runsc"))),
            (Some("runsc"), &[], Some("runc"), Err(())),
            (None, &[], Some("runsc"), Err(())),
            (None, &["runsc"], Some("runsc"), Ok(Some("runsc"))),
            (Some("runsc"), &["kata"], Some("kata"), Ok(Some("kata"))),
            (Some("runsc"), &["kata"], Some(""), Ok(Some("runsc"))),
        ];
        for (rt, allowed, asked, want) in cases {
            let p = with_runtimes(*rt, allowed);
            let got = p.runtime_for(*asked);
            match want {
                Ok(w) => assert_eq!(got, Ok(w.map(String::from)), "{rt:?} {allowed:?} {asked:?}"),
                Err(()) => {
                    let e = got.unwrap_err();
                    assert_eq!(e.failure_reason(), FailureReason::ContainerCreate);
                    let text = e.to_string();
                    assert!(text.contains(asked.unwrap()), "{text}");
                    assert!(text.contains("allowed_runtimes"), "{text}");
                }
            }
        }
    }

    #[test]
    fn every_runtime_the_policy_may_use_must_be_registered() {
        let reg = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(unregistered(&with_runtimes(None, &[]), &[]), None);
        assert_eq!(
            unregistered(&with_runtimes(Some("runsc"), &[]), &reg(&["runc"])),
            Some("runsc")
        );
        assert_eq!(
            unregistered(&with_runtimes(Some("runsc"), &[]), &reg(&["runc", "runsc"])),
            None
        );
        assert_eq!(
            unregistered(&with_runtimes(None, &["kata"]), &reg(&["runc", "runsc"])),
            Some("kata")
        );
    }

    #[test]
    fn strict_hardens_every_setting_and_keeps_only_a_numeric_non_root_image_user() {
        let base = Security {
            cap_add: vec!["NET_RAW".into()],
            pids_limit: Some(100_000),
            no_new_privileges: false,
            ..Security::default()
        };
        assert_eq!(base.hardened(Profile::Default, "", "/workspace"), base);
        let s = base.hardened(Profile::Strict, "", "/workspace");
        assert_eq!(s.user.as_deref(), Some(STRICT_USER));
        assert_eq!(s.cap_drop, ["ALL"]);
        assert!(s.cap_add.is_empty());
        assert!(s.no_new_privileges && s.read_only_rootfs);
        assert_eq!(s.pids_limit, Some(STRICT_PIDS));
        assert_eq!(
            s.tmpfs,
            [
                (
                    "/tmp".to_string(),
                    "rw,exec,nosuid,nodev,mode=1777".to_string()
                ),
                (
                    "/workspace".to_string(),
                    "rw,exec,nosuid,nodev,mode=0755,uid=65534,gid=65534".to_string()
                ),
            ]
        );
        let users = [
            ("", STRICT_USER),
            ("root", STRICT_USER),
            ("0", STRICT_USER),
            ("0:0", STRICT_USER),
            ("node", STRICT_USER),
            ("1000", "1000"),
            ("1000:1001", "1000:1001"),
        ];
        for (image, want) in users {
            let s = base.hardened(Profile::Strict, image, "/workspace");
            assert_eq!(s.user.as_deref(), Some(want), "{image:?}");
        }
        // The operator's own user and a lower pids limit win.
        let op = Security {
            user: Some("4242:4242".into()),
            pids_limit: Some(64),
            ..Security::default()
        };
        let s = op.hardened(Profile::Strict, "1000", "/workspace/app");
        assert_eq!(s.user.as_deref(), Some("4242:4242"));
        assert_eq!(s.pids_limit, Some(64));
        let paths: Vec<&str> = s.tmpfs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/tmp", "/workspace", "/workspace/app"]);
    }
}
