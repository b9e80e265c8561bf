//! Starting an execution's task-log export (PROTOCOL §8.3): the gates decide, a refusal is
//! one warning naming the gate, and an export gets the execution's secrets, resource and
//! spool. Absent `telemetry_collection`: nothing at all happens here.

use tracing::warn;

use super::run::Run;
use crate::tasklogs::exporter::{Handle, Start};
use crate::tasklogs::gates::{Decision, Inputs, decide};
use crate::tasklogs::record::Resource;

/// The exporter of this run, started at spool offset `from`; `None` when it does not export.
pub(super) fn start(run: &Run<'_>, from: u64) -> Option<Handle> {
    let a = &run.exec.assignment;
    let s = &run.settings;
    let decision = decide(Inputs {
        enabled: s.task_logs.enabled,
        allow_insecure: s.task_logs.allow_insecure,
        telemetry: a.telemetry_collection.as_ref(),
        env_vars: a.env_vars.as_ref(),
        server_root_url: &s.agent.server_root_url,
    });
    let plan = match decision {
        Decision::Absent => return None,
        Decision::Refused(gate) => {
            run.env.metrics.task_log_refused(gate.refusal());
            warn!(gate = %gate, "task logs are not exported");
            return None;
        }
        Decision::Export(p) => *p,
    };
    let client = run.env.task_logs.clone()?;
    Some(Handle::spawn(Start {
        client,
        journal: run.env.journal.clone(),
        metrics: run.env.metrics.clone(),
        plan,
        resource: Resource {
            worker_id: s.worker_id.clone(),
            backend: run.env.backend.kind().to_string(),
            run_id: a.task_id.clone(),
            execution_id: run.exec.execution_id.clone(),
        },
        secrets: secrets(run),
        spool: run.exec.spool.clone(),
        from,
    }))
}

/// Gives the exporter, if this run has one, the container's name for its records (one
/// inspect of the container; none when nothing is exported).
pub(super) async fn name_container(run: &Run<'_>, container_id: &str) {
    let Some(logs) = run.logs.as_ref() else {
        return;
    };
    if let Some(name) = run.env.backend.display_name(container_id).await {
        logs.container_name(name);
    }
}

/// Every secret PROTOCOL §8.3 registers (env values, the operator's task environment, the
/// bootstrap token), plus berth's own API key and `transcript.redact` literals.
fn secrets(run: &Run<'_>) -> Vec<String> {
    let a = &run.exec.assignment;
    let s = &run.settings;
    let env = a.env_vars.iter().flatten().map(|(_, v)| v.clone());
    let operator = s.operator_env.iter().map(|(_, v)| v.clone());
    let bootstrap = a
        .telemetry_collection
        .iter()
        .filter_map(|t| t.bootstrap_token.as_ref())
        .map(|b| b.token.clone());
    let own = std::iter::once(s.api_key.expose().to_string())
        .chain(s.redact.iter().map(|r| r.expose().to_string()));
    env.chain(operator).chain(bootstrap).chain(own).collect()
}
