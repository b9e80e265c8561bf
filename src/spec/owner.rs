//! Whose a sandbox is. Several berths may share one worker id on one engine (Oz suggests it for
//! redundancy; a blue/green upgrade starts the new berth before stopping the old), so the
//! worker id alone does not say which berth created a container or a network: each berth
//! instance also labels what it creates with its own id (kept in its `state_dir`), and touches
//! only what carries it.

use std::collections::BTreeMap;

use crate::spec::{LABEL_MANAGED, LABEL_WORKER};

/// Label naming the berth instance that created a sandbox.
pub const LABEL_INSTANCE: &str = "berth.instance";

/// The creator of a sandbox: worker id and berth instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub worker_id: String,
    /// The instance id (`state_dir/instance-id`).
    pub instance: String,
}

/// How a sandbox listed for this worker id relates to this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Created by this instance.
    Mine,
    /// Created by a berth before instance labels existed: this instance's only when its
    /// journal knows the execution.
    Unlabelled,
    /// Another berth instance's, with this worker id: never touched.
    Other(String),
}

impl Owner {
    /// An owner (the instance of a journal, e.g.).
    pub fn new(worker_id: &str, instance: &str) -> Owner {
        Owner {
            worker_id: worker_id.to_string(),
            instance: instance.to_string(),
        }
    }

    /// The labels that say so.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_WORKER.to_string(), self.worker_id.clone()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
        ])
    }

    /// Whose a sandbox of this worker id is, by its instance label.
    pub fn ownership(&self, instance_label: Option<&str>) -> Ownership {
        match instance_label {
            None | Some("") => Ownership::Unlabelled,
            Some(i) if i == self.instance => Ownership::Mine,
            Some(other) => Ownership::Other(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_its_own_instance_label_is_mine() {
        let me = Owner::new("w", "i-1");
        assert_eq!(me.ownership(Some("i-1")), Ownership::Mine);
        assert_eq!(me.ownership(Some("i-2")), Ownership::Other("i-2".into()));
        assert_eq!(me.ownership(None), Ownership::Unlabelled);
        assert_eq!(me.ownership(Some("")), Ownership::Unlabelled);
        let labels = me.labels();
        assert_eq!(labels.get(LABEL_INSTANCE).map(String::as_str), Some("i-1"));
        assert_eq!(labels.get(LABEL_WORKER).map(String::as_str), Some("w"));
        assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    }
}
