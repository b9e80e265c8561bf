//! The saved view: what `berth dev` writes to its directory and loads again on restart.

use serde::{Deserialize, Serialize};

use super::tables::State;
use crate::devserver::stored_transcript::StoredTranscript;
use crate::devserver::task::TaskRecord;
use crate::protocol::{Stream, TaskAssignment};

/// What a control plane keeps across restarts of `berth dev`: tasks, the queue and
/// transcripts (workers reconnect by themselves; their connections are not state).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    tasks: Vec<SavedTask>,
    queue: Vec<String>,
    transcripts: Vec<SavedTranscript>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedTask {
    record: TaskRecord,
    assignment: Option<TaskAssignment>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedTranscript {
    execution_id: String,
    bytes_b64: String,
    runs: Vec<(u64, Stream, u64)>,
}

impl State {
    /// Everything worth keeping, in submission order.
    pub fn save(&self) -> Saved {
        use base64::Engine;
        Saved {
            tasks: self
                .order
                .iter()
                .filter_map(|id| self.tasks.get(id))
                .map(|t| SavedTask {
                    record: t.clone(),
                    assignment: t.assignment.clone(),
                })
                .collect(),
            queue: self.queue.iter().cloned().collect(),
            transcripts: self
                .transcripts
                .iter()
                .map(|(e, t)| SavedTranscript {
                    execution_id: e.clone(),
                    bytes_b64: base64::engine::general_purpose::STANDARD.encode(&t.bytes),
                    runs: t.runs.clone(),
                })
                .collect(),
        }
    }

    /// A state as saved (no workers yet; a transcript whose runs do not match its bytes is
    /// dropped rather than served wrong).
    pub fn restored(saved: Saved) -> State {
        use base64::Engine;
        let mut s = State::default();
        for t in saved.tasks {
            let mut record = t.record;
            record.assignment = t.assignment;
            s.order.push(record.id.clone());
            s.tasks.insert(record.id.clone(), record);
        }
        s.queue = saved
            .queue
            .into_iter()
            .filter(|id| s.tasks.contains_key(id))
            .collect();
        for t in saved.transcripts {
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&t.bytes_b64) else {
                continue;
            };
            let covered: u64 = t.runs.iter().map(|r| r.2).sum();
            if covered != bytes.len() as u64 {
                continue;
            }
            s.transcripts.insert(
                t.execution_id,
                StoredTranscript {
                    bytes,
                    runs: t.runs,
                },
            );
        }
        s
    }
}
