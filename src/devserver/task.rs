//! What a task is on the server: the submit request, the record the HTTP API shows (the run with
//! its executions) and the setup events the worker posted for it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::execution::ExecutionRecord;
use crate::protocol::{
    AdditionalSidecar, AgentConfigSnapshot, InstanceShape, Owner, TaskAssignment,
    TelemetryCollection,
};

/// `POST /v1/tasks` body: the common fields, plus Oz assignment fields for compatibility tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Image to run.
    #[serde(default)]
    pub image: Option<String>,
    /// argv (berth/1 `command`); empty runs the Oz agent entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    /// Agent sidecar image.
    #[serde(default)]
    pub sidecar_image: Option<String>,
    /// Extra sidecars.
    #[serde(default)]
    pub additional_sidecars: Vec<AdditionalSidecar>,
    /// Extra agent args.
    #[serde(default)]
    pub additional_oz_args: Vec<String>,
    /// Compute shape.
    #[serde(default)]
    pub instance_shape: Option<InstanceShape>,
    /// Owner (`{"Type": "TEAM", "Id": 1}`).
    #[serde(default)]
    pub owner: Option<Owner>,
    /// Agent configuration.
    #[serde(default)]
    pub agent_config_snapshot: Option<AgentConfigSnapshot>,
    /// berth/1 inline environment (`{image, env, workdir}`).
    #[serde(default)]
    pub environment: Option<serde_json::Value>,
    /// PROTOCOL §8.3: ask the worker to export the execution's logs over OTLP. `berth dev`
    /// fills it in itself when it runs its own receiver; absent, the assignment has none.
    #[serde(default)]
    pub telemetry_collection: Option<TelemetryCollection>,
    /// Lifecycle-hook context (PROTOCOL.md §8.5), passed on as given.
    #[serde(default)]
    pub oz_lifecycle_hooks: Option<crate::protocol::RawJson>,
}

/// A task as the HTTP API shows it: the run, its current (latest) execution's fields at the
/// top level, the earlier executions and the setup events the worker posted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task (run) id.
    pub id: String,
    /// Image asked for.
    pub image: Option<String>,
    /// Command asked for.
    pub command: Vec<String>,
    /// How often the task was assigned (every execution).
    pub assignments: u32,
    /// How often a worker rejected it.
    pub rejections: u32,
    /// The reason of the latest rejection (why a task stays queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<String>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// The current execution.
    #[serde(flatten)]
    pub current: ExecutionRecord,
    /// Earlier executions, oldest first.
    #[serde(default)]
    pub earlier: Vec<ExecutionRecord>,
    /// Setup-phase events the worker posted (PROTOCOL §7).
    #[serde(default)]
    pub events: Vec<ClientEvent>,
    #[serde(skip)]
    pub(super) assignment: Option<TaskAssignment>,
}

/// A task reads as its current execution (`record.state` is the latest execution's state):
/// most callers only ever look at that one.
impl std::ops::Deref for TaskRecord {
    type Target = ExecutionRecord;
    fn deref(&self) -> &ExecutionRecord {
        &self.current
    }
}

impl TaskRecord {
    /// Every execution, oldest first.
    pub fn executions(&self) -> impl Iterator<Item = &ExecutionRecord> {
        self.earlier.iter().chain(std::iter::once(&self.current))
    }

    /// One execution by id.
    pub fn execution(&self, execution_id: &str) -> Option<&ExecutionRecord> {
        self.executions().find(|e| e.execution_id == execution_id)
    }

    /// The execution a worker message is about: the one it names, else the current one (oz/1
    /// results name none).
    pub(super) fn execution_mut(&mut self, execution_id: Option<&str>) -> &mut ExecutionRecord {
        match execution_id {
            Some(e) if e != self.current.execution_id => {
                match self.earlier.iter_mut().find(|x| x.execution_id == e) {
                    Some(x) => x,
                    None => &mut self.current,
                }
            }
            _ => &mut self.current,
        }
    }
}

/// A setup-phase event as the worker posted it (`POST /api/v1/agent/runs/{id}/client-events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientEvent {
    pub event_uuid: String,
    pub event_name: String,
    pub timestamp: String,
    pub start_ts: String,
    pub finish_ts: String,
    pub latency_ms: u64,
    pub is_error: bool,
}
