//! What berth needs to be allowed to do in its namespace, and asking the API server whether it
//! is (SelfSubjectAccessReview: any authenticated identity may ask about itself). The table is
//! the calls this backend makes; packaging/kubernetes/role.yaml grants exactly these (its
//! `check` compares), plus what egress policies will need.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

use super::client::bounded;
use crate::backend::BackendError;

/// (API group, resource, verb) the backend uses in its namespace.
pub const NEEDED: &[(&str, &str, &str)] = &[
    ("batch", "jobs", "create"),
    ("batch", "jobs", "get"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "patch"),
    ("batch", "jobs", "delete"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "patch"),
    ("", "pods", "delete"),
    ("", "pods/log", "get"),
    ("", "events", "list"),
];

/// One permission and the API server's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `verb group/resource`, as an operator reads it.
    pub what: String,
    pub allowed: bool,
}

fn what(group: &str, resource: &str, verb: &str) -> String {
    if group.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {group}/{resource}")
    }
}

/// Asks, for each of [`NEEDED`], whether this identity may do it in `namespace`.
pub async fn review(client: &kube::Client, namespace: &str) -> Result<Vec<Answer>, BackendError> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut out = Vec::new();
    for (group, resource, verb) in NEEDED {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_string())),
            None => (*resource, None),
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some(verb.to_string()),
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    subresource,
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = bounded(
            "asking for an access review",
            api.create(&PostParams::default(), &review),
        )
        .await?;
        out.push(Answer {
            what: what(group, &format!("{resource}{}", review_sub(&review)), verb),
            allowed: answer.status.is_some_and(|s| s.allowed),
        });
    }
    Ok(out)
}

fn review_sub(r: &SelfSubjectAccessReview) -> String {
    r.spec
        .resource_attributes
        .as_ref()
        .and_then(|a| a.subresource.as_deref())
        .map(|s| format!("/{s}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_what_packaging_grants() {
        // packaging/kubernetes/role.yaml must grant every needed verb (its check compares the
        // Role with its own list; this compares that list with the code's).
        let role = include_str!("../../../packaging/kubernetes/check");
        for (group, resource, verb) in NEEDED {
            let g = if group.is_empty() { "\"\"" } else { group };
            let line = role
                .lines()
                .find(|l| l.starts_with(&format!("{g} {resource} ")))
                .unwrap_or_else(|| {
                    panic!("no rule for {g} {resource} in packaging/kubernetes/check")
                });
            let verbs = line.rsplit(' ').next().unwrap_or_default();
            assert!(
                verbs.split(',').any(|v| v == *verb),
                "{verb} missing from {line}"
            );
        }
    }

    #[test]
    fn answers_read_as_an_operator_writes_them() {
        assert_eq!(what("batch", "jobs", "create"), "create batch/jobs");
        assert_eq!(what("", "pods/log", "get"), "get pods/log");
    }
}
