//! Recent executions on this host (`GET /v1/history`, `berth tasks`): what the journal holds,
//! newest first, without anything secret (the assignment's env stays in the journal).

use serde::{Deserialize, Serialize};

use crate::journal::{ExecRecord, ExecState};
use crate::protocol::WorkerMessage;

/// How many rows `berth tasks` shows unless told otherwise.
pub const DEFAULT_LIMIT: usize = 20;

/// One execution as `berth tasks` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub task_id: String,
    pub execution_id: String,
    /// `claimed`, `provisioning`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// The container's exit status, when one is known.
    pub exit_code: Option<i64>,
    /// The failure reason of a failed execution (`container_exit`, `task_timeout`, …).
    pub failure_reason: Option<String>,
    /// The image the assignment asked for (`-` when it named none).
    pub image: String,
    /// Claim time, ms since the epoch.
    pub claimed_at_ms: i64,
    /// Claim to terminal (or to `now` while it runs), in seconds.
    pub duration_secs: f64,
    /// The result and transcript are acknowledged by the control plane.
    pub delivered: bool,
}

/// The row of one journal record (pure; `now_ms` times executions still running).
pub fn row(r: &ExecRecord, now_ms: i64) -> HistoryRow {
    let (state, exit_code, failure_reason) = match (&r.terminal, r.state) {
        (Some(WorkerMessage::TaskCompleted { task_state, .. }), _) => {
            let cancelled = task_state.as_deref() == Some(crate::protocol::TASK_STATE_CANCELLED);
            let state = if cancelled { "cancelled" } else { "succeeded" };
            (state, (!cancelled).then_some(0), None)
        }
        (
            Some(WorkerMessage::TaskFailed {
                exit_code,
                failure_reason,
                ..
            }),
            _,
        ) => (
            "failed",
            *exit_code,
            failure_reason.map(|f| f.as_str().to_string()),
        ),
        (_, ExecState::Claimed) => ("claimed", None, None),
        (_, ExecState::Provisioning) => ("provisioning", None, None),
        // A terminal message of another kind cannot be journaled; report what the state says.
        (_, ExecState::Running | ExecState::Finished) => ("running", None, None),
    };
    let end = r.finished_at_ms.unwrap_or(now_ms);
    HistoryRow {
        task_id: r.task_id.clone(),
        execution_id: r.execution_id.clone(),
        state: state.to_string(),
        exit_code,
        failure_reason,
        image: r
            .assignment
            .docker_image
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| "-".to_string()),
        claimed_at_ms: r.claimed_at_ms,
        duration_secs: (end - r.claimed_at_ms).max(0) as f64 / 1000.0,
        delivered: r.terminal_done,
    }
}

/// The newest `limit` rows of `records`.
pub fn recent(records: &[ExecRecord], now_ms: i64, limit: usize) -> Vec<HistoryRow> {
    let mut rows: Vec<HistoryRow> = records.iter().map(|r| row(r, now_ms)).collect();
    rows.sort_by(|a, b| {
        b.claimed_at_ms
            .cmp(&a.claimed_at_ms)
            .then_with(|| a.execution_id.cmp(&b.execution_id))
    });
    rows.truncate(limit);
    rows
}

/// `berth tasks` for people: one line per execution.
pub fn render(rows: &[HistoryRow], now_ms: i64) -> String {
    if rows.is_empty() {
        return "no tasks on this worker yet (finished ones are kept for transcript.retention)\n"
            .to_string();
    }
    let mut out = format!(
        "{:<38} {:<12} {:>5} {:>9} {:>8}  {}\n",
        "TASK", "STATE", "EXIT", "DURATION", "AGE", "IMAGE"
    );
    for r in rows {
        let state = match (&r.failure_reason, r.state.as_str()) {
            (Some(why), "failed") => format!("failed:{why}"),
            _ => r.state.clone(),
        };
        out.push_str(&format!(
            "{:<38} {:<12} {:>5} {:>9} {:>8}  {}\n",
            r.task_id,
            state,
            r.exit_code.map_or("-".to_string(), |c| c.to_string()),
            format!("{:.1}s", r.duration_secs),
            ago(now_ms - r.claimed_at_ms),
            r.image
        ));
    }
    out
}

fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureReason;
    use crate::journal::Closure;
    use crate::protocol::TaskAssignment;

    fn rec(id: &str, claimed: i64, terminal: Option<WorkerMessage>) -> ExecRecord {
        ExecRecord {
            execution_id: format!("e-{id}"),
            task_id: id.into(),
            assignment: TaskAssignment {
                task_id: id.into(),
                docker_image: Some("busybox:1".into()),
                ..TaskAssignment::default()
            },
            berth: true,
            state: if terminal.is_some() {
                ExecState::Finished
            } else {
                ExecState::Running
            },
            container_id: None,
            acked_offset: 0,
            terminal,
            terminal_done: false,
            claimed_at_ms: claimed,
            finished_at_ms: None,
            closure: Closure::None,
        }
    }

    fn completed(cancelled: bool) -> WorkerMessage {
        WorkerMessage::TaskCompleted {
            task_id: "t".into(),
            message: String::new(),
            task_state: cancelled.then(|| crate::protocol::TASK_STATE_CANCELLED.to_string()),
            ext: None,
        }
    }

    #[test]
    fn rows_carry_state_exit_reason_duration_and_image() {
        let mut ok = rec("a", 1_000, Some(completed(false)));
        ok.finished_at_ms = Some(3_500);
        ok.terminal_done = true;
        let r = row(&ok, 10_000);
        assert_eq!(
            (r.state.as_str(), r.exit_code, r.duration_secs, r.delivered),
            ("succeeded", Some(0), 2.5, true)
        );
        assert_eq!(r.image, "busybox:1");
        let r = row(&rec("b", 1_000, Some(completed(true))), 2_000);
        assert_eq!((r.state.as_str(), r.exit_code), ("cancelled", None));
        let failed = WorkerMessage::TaskFailed {
            task_id: "c".into(),
            message: String::new(),
            task_state: None,
            failure_reason: Some(FailureReason::TaskTimeout),
            exit_code: Some(143),
            ext: None,
        };
        let r = row(&rec("c", 0, Some(failed)), 1_000);
        assert_eq!(
            (r.state.as_str(), r.exit_code, r.failure_reason.as_deref()),
            ("failed", Some(143), Some("task_timeout"))
        );
        // Still running: timed until now.
        let r = row(&rec("d", 1_000, None), 4_000);
        assert_eq!((r.state.as_str(), r.duration_secs), ("running", 3.0));
        let mut none = rec("e", 0, None);
        none.assignment.docker_image = None;
        assert_eq!(row(&none, 0).image, "-");
    }

    #[test]
    fn recent_is_newest_first_and_limited() {
        let records: Vec<ExecRecord> = (0..5).map(|i| rec(&format!("t{i}"), i, None)).collect();
        let rows = recent(&records, 10, 3);
        let ids: Vec<&str> = rows.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(ids, ["t4", "t3", "t2"]);
    }

    #[test]
    fn render_has_a_header_and_one_line_per_row() {
        let mut f = rec("task-1", 0, None);
        f.terminal = Some(WorkerMessage::TaskFailed {
            task_id: "task-1".into(),
            message: String::new(),
            task_state: None,
            failure_reason: Some(FailureReason::ContainerExit),
            exit_code: Some(3),
            ext: None,
        });
        f.finished_at_ms = Some(1_500);
        let text = render(&[row(&f, 120_000)], 120_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("TASK") && lines[0].contains("IMAGE"));
        assert!(
            lines[1].contains("failed:container_exit")
                && lines[1].contains(" 3 ")
                && lines[1].contains("1.5s")
                && lines[1].contains("2m")
                && lines[1].ends_with("busybox:1"),
            "{text}"
        );
        assert!(render(&[], 0).contains("no tasks"));
    }
}
