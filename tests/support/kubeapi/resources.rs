//! The resources the fake serves: group, version, plural, kind, scope.

/// What a stored object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Job,
    Event,
    Service,
    NetworkPolicy,
    RuntimeClass,
    /// Not stored: answered from the kubelet (metrics.k8s.io).
    PodMetrics,
    /// Not stored: answered from the deny rules (authorization.k8s.io).
    SelfSubjectAccessReview,
}

#[derive(Debug, Clone, Copy)]
pub struct ResInfo {
    pub kind: Kind,
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind_name: &'static str,
    pub namespaced: bool,
}

impl ResInfo {
    /// `jobs.batch`, `pods` (how error messages name the resource).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `batch/v1`, `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

pub const RESOURCES: &[ResInfo] = &[
    ResInfo {
        kind: Kind::Namespace,
        group: "",
        version: "v1",
        plural: "namespaces",
        kind_name: "Namespace",
        namespaced: false,
    },
    ResInfo {
        kind: Kind::Node,
        group: "",
        version: "v1",
        plural: "nodes",
        kind_name: "Node",
        namespaced: false,
    },
    ResInfo {
        kind: Kind::Pod,
        group: "",
        version: "v1",
        plural: "pods",
        kind_name: "Pod",
        namespaced: true,
    },
    ResInfo {
        kind: Kind::Event,
        group: "",
        version: "v1",
        plural: "events",
        kind_name: "Event",
        namespaced: true,
    },
    ResInfo {
        kind: Kind::Service,
        group: "",
        version: "v1",
        plural: "services",
        kind_name: "Service",
        namespaced: true,
    },
    ResInfo {
        kind: Kind::Job,
        group: "batch",
        version: "v1",
        plural: "jobs",
        kind_name: "Job",
        namespaced: true,
    },
    ResInfo {
        kind: Kind::NetworkPolicy,
        group: "networking.k8s.io",
        version: "v1",
        plural: "networkpolicies",
        kind_name: "NetworkPolicy",
        namespaced: true,
    },
    ResInfo {
        kind: Kind::RuntimeClass,
        group: "node.k8s.io",
        version: "v1",
        plural: "runtimeclasses",
        kind_name: "RuntimeClass",
        namespaced: false,
    },
    ResInfo {
        kind: Kind::PodMetrics,
        group: "metrics.k8s.io",
        version: "v1beta1",
        plural: "pods",
        kind_name: "PodMetrics",
        namespaced: true,
    },
    ResInfo {
        kind: Kind::SelfSubjectAccessReview,
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectaccessreviews",
        kind_name: "SelfSubjectAccessReview",
        namespaced: false,
    },
];

pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn info(kind: Kind) -> &'static ResInfo {
    // Every Kind has a row above.
    RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .unwrap_or(&RESOURCES[0])
}
