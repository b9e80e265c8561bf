//! `task_logs.*`: task-log export over OTLP (PROTOCOL §8.3), asked for per execution by the
//! control plane (`telemetry_collection`) and allowed or refused here by the operator.

use super::raw::RawTaskLogs;

/// Operator settings of task-log export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLogSettings {
    /// Export when the control plane asks for it (default on). Off: never, whatever it asks.
    pub enabled: bool,
    /// Accept plain `http` collector and identity URLs on hosts other than loopback.
    pub allow_insecure: bool,
}

impl Default for TaskLogSettings {
    fn default() -> Self {
        TaskLogSettings {
            enabled: true,
            allow_insecure: false,
        }
    }
}

/// The section with its defaults applied (both keys are booleans, checked by serde).
pub(super) fn task_logs_section(raw: Option<RawTaskLogs>) -> TaskLogSettings {
    let raw = raw.unwrap_or_default();
    let d = TaskLogSettings::default();
    TaskLogSettings {
        enabled: raw.enabled.unwrap_or(d.enabled),
        allow_insecure: raw.allow_insecure.unwrap_or(d.allow_insecure),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{load_yaml, with_key};

    #[test]
    fn export_is_on_and_loopback_only_for_plain_http_by_default() {
        let c = load_yaml("worker_id: h\n", &with_key()).unwrap();
        assert!(c.task_logs.enabled);
        assert!(!c.task_logs.allow_insecure);
    }

    #[test]
    fn both_keys_are_read() {
        let c = load_yaml(
            "worker_id: h\ntask_logs:\n  enabled: false\n  allow_insecure: true\n",
            &with_key(),
        )
        .unwrap();
        assert!(!c.task_logs.enabled);
        assert!(c.task_logs.allow_insecure);
    }

    #[test]
    fn unknown_keys_and_non_booleans_are_refused_with_their_line() {
        for yaml in [
            "worker_id: h\ntask_logs:\n  enable: false\n",
            "worker_id: h\ntask_logs:\n  enabled: maybe\n",
            "worker_id: h\ntask_logs:\n  enabled: yes\n",
        ] {
            let e = load_yaml(yaml, &with_key()).unwrap_err().to_string();
            assert!(e.contains("line 3") || e.contains(":3"), "{yaml}: {e}");
        }
    }
}
