//! The journal: the worker's only durable state besides the spools.
//!
//! SQLite (bundled) in WAL mode with `synchronous=FULL`: every committed transition survives
//! kill -9 and power loss, a crash mid-transaction leaves the previous state, and an operator
//! can inspect it with `sqlite3`. One row per execution: ids, assignment, container, state,
//! acknowledged transcript offset, and the terminal message until it is acknowledged (the
//! durable outbox). Writes take about 0.3 ms, so they run inline under a mutex.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::protocol::{TaskAssignment, WorkerMessage};

/// File name under `state_dir`.
pub const FILE: &str = "journal.sqlite";

/// A journal failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file exists but is not a usable journal.
    #[error(
        "journal {path} is unreadable ({reason}). berth refuses to start rather than forget results: move the file aside (e.g. `mv {path} {path}.broken`) to start with an empty journal - running task containers are then stopped as orphans - or restore it from a backup"
    )]
    Corrupt {
        /// File.
        path: PathBuf,
        /// What SQLite said.
        reason: String,
    },
    /// A record cannot be read (written by a newer version, or damaged): berth cannot tell
    /// that execution's container from an orphan, so it touches nothing.
    #[error(
        "journal {path}: the record of execution {execution_id:?} is unreadable ({reason}). berth touches no container while it cannot read its journal; if a newer berth wrote it, run that version again, otherwise remove that record (`sqlite3 {path} \"DELETE FROM executions WHERE execution_id='{execution_id}'\"`) and that execution's container (label berth.execution_id) by hand"
    )]
    BadRecord {
        /// File.
        path: PathBuf,
        /// The record.
        execution_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other SQLite or disk failure.
    #[error("journal {path}: {reason} (check free space and permissions under state_dir)")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
}

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecState {
    /// Claimed; no container yet (or being created).
    Claimed,
    /// Container created and started, held while the environment is provisioned inside it
    /// (the task's own command has not run).
    Provisioning,
    /// Container created and (about to be) started.
    Running,
    /// Terminal message decided; it and the transcript may still be unacknowledged.
    Finished,
}

impl ExecState {
    /// The state stored as `s`; `None` for one this version does not know (never guessed:
    /// a state read wrong makes a running container look like an orphan, or the reverse).
    fn parse(s: &str) -> Option<ExecState> {
        match s {
            "claimed" => Some(ExecState::Claimed),
            "running" => Some(ExecState::Running),
            "provisioning" => Some(ExecState::Provisioning),
            "finished" => Some(ExecState::Finished),
            _ => None,
        }
    }
}

/// Where the proven closure of a cancelled execution stands (PROTOCOL §7). Durable, so a
/// restart in the middle of a cleanup resumes it and the message is sent once after proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Closure {
    /// Not cancelled (or cancelled by an older berth).
    #[default]
    None,
    /// Cancelled: `execution_closed` is owed once the sandbox is proven gone.
    Wanted,
    /// The sandbox is proven gone; the message is not yet written.
    Proven,
    /// `execution_closed` was written to the control plane.
    Sent,
}

impl Closure {
    fn parse(s: Option<&str>) -> Option<Closure> {
        match s {
            None => Some(Closure::None),
            Some("wanted") => Some(Closure::Wanted),
            Some("proven") => Some(Closure::Proven),
            Some("sent") => Some(Closure::Sent),
            Some(_) => None,
        }
    }

    /// `execution_closed` is owed and not yet written.
    pub fn owed(self) -> bool {
        matches!(self, Closure::Wanted | Closure::Proven)
    }
}

/// One execution's durable record.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecRecord {
    /// Execution id (primary key).
    pub execution_id: String,
    pub task_id: String,
    /// The assignment as received (holds env secrets: the file is private to berth).
    pub assignment: TaskAssignment,
    /// berth/1 was negotiated when it was claimed.
    pub berth: bool,
    pub state: ExecState,
    /// Container, once created.
    pub container_id: Option<String>,
    /// Transcript bytes the server acknowledged.
    pub acked_offset: u64,
    /// The terminal message, once decided.
    pub terminal: Option<WorkerMessage>,
    /// The terminal message was acknowledged (berth/1) or written to a healthy socket (oz/1).
    pub terminal_done: bool,
    /// Claim time, ms since the epoch.
    pub claimed_at_ms: i64,
    /// Finish time, ms since the epoch.
    pub finished_at_ms: Option<i64>,
    /// Proven closure after a cancellation.
    pub closure: Closure,
}

/// What the journal knows of an execution this instance owns for debug archives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveOwner {
    /// Not finished (`false`: in its cleanup grace).
    pub active: bool,
    /// Its sandbox was created.
    pub started: bool,
    /// Its container, once created.
    pub container_id: Option<String>,
}

pub struct Journal {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// This berth instance's identity (see [`INSTANCE_FILE`]); empty when opened read-only
    /// where none was made yet.
    instance: String,
}

/// File under `state_dir` holding the identity of the berth instance that owns it: a random
/// id made at first start and kept. Every sandbox berth creates is labelled with it, and
/// berth touches only sandboxes with its own (several berths may share a worker id on one
/// engine: redundancy, blue/green upgrades).
pub const INSTANCE_FILE: &str = "instance-id";

/// Whether `id` can be an instance id (a label value and a file's whole content).
fn valid_instance(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The instance id kept in `state_dir` (none before the first start), without making one.
pub fn existing_instance(state_dir: &Path) -> Result<Option<String>, JournalError> {
    instance_id(state_dir, false).map(|id| Some(id).filter(|i| !i.is_empty()))
}

/// Reads `state_dir/instance-id`, making it on first use.
fn instance_id(state_dir: &Path, create: bool) -> Result<String, JournalError> {
    let path = state_dir.join(INSTANCE_FILE);
    let io = |reason: String| JournalError::Io {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if valid_instance(text.trim()) => return Ok(text.trim().to_string()),
        Ok(text) if !text.trim().is_empty() => {
            return Err(io(format!(
                "{:?} is not an instance id (letters, digits, - and _, at most 64); restore the file, or remove it if no task container of this berth is running (a new id makes running containers another instance's)",
                text.trim()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e.to_string())),
    }
    if !create {
        return Ok(String::new());
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    crate::private::write_atomic(&path, format!("{id}\n").as_bytes())
        .map_err(|e| io(e.to_string()))?;
    Ok(id)
}

/// How long an operation waits for another connection's lock before failing.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sorts an SQLite failure at open time: a lock held elsewhere or a permission problem is not
/// corruption, and must not send the operator to move the file aside.
fn classify(path: &Path, e: rusqlite::Error) -> JournalError {
    use rusqlite::ErrorCode::*;
    let reason = e.to_string();
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked) => JournalError::Io {
            path: path.to_path_buf(),
            reason: format!(
                "{reason}: another process holds it (is a second worker using this state_dir?)"
            ),
        },
        Some(CannotOpen | PermissionDenied | ReadOnly | DiskFull | SystemIoFailure) => {
            JournalError::Io {
                path: path.to_path_buf(),
                reason,
            }
        }
        _ => JournalError::Corrupt {
            path: path.to_path_buf(),
            reason,
        },
    }
}

/// A stored result names its execution as the server did: `assigned` is not a wire field, so it
/// comes back from the stored assignment (oz/1 echoes only a server-given `execution_id`).
fn assigned_from(mut terminal: WorkerMessage, assignment: &TaskAssignment) -> WorkerMessage {
    if let WorkerMessage::TaskCompleted { ext: Some(e), .. }
    | WorkerMessage::TaskFailed { ext: Some(e), .. } = &mut terminal
    {
        e.assigned = assignment
            .execution_id
            .as_deref()
            .is_some_and(|x| !x.is_empty());
    }
    terminal
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Journal {
    /// Opens (creating) `state_dir/journal.sqlite` and checks its integrity.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join(FILE);
        let io = |e: &dyn std::fmt::Display| JournalError::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        crate::private::create_dir(state_dir).map_err(|e| io(&e))?;
        // Created private before SQLite opens it: SQLite gives the WAL and shared-memory files
        // the database file's mode, and the WAL holds task env values.
        crate::private::open_rw(&path, true).map_err(|e| io(&e))?;
        crate::private::tighten(&path, crate::private::FILE_MODE).map_err(|e| io(&e))?;
        let corrupt = |e: &dyn std::fmt::Display| JournalError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        };
        let conn = Connection::open(&path).map_err(|e| corrupt(&e))?;
        // A reader (`berth logs`) or a checkpoint may hold the lock for a moment: wait for it
        // rather than mistaking a busy file for a broken one.
        conn.busy_timeout(BUSY_WAIT).map_err(|e| io(&e))?;
        let corrupt = |e: rusqlite::Error| classify(&path, e);
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(JournalError::Corrupt {
                path: path.clone(),
                reason: check,
            });
        }
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS executions (
               execution_id TEXT PRIMARY KEY,
               task_id TEXT NOT NULL,
               assignment TEXT NOT NULL,
               berth INTEGER NOT NULL,
               state TEXT NOT NULL,
               container_id TEXT,
               acked_offset INTEGER NOT NULL DEFAULT 0,
               terminal TEXT,
               terminal_done INTEGER NOT NULL DEFAULT 0,
               claimed_at INTEGER NOT NULL,
               finished_at INTEGER
             );
             CREATE INDEX IF NOT EXISTS executions_task ON executions(task_id);",
        )
        .map_err(corrupt)?;
        // Columns added by later versions: journals written before them gain each one
        // (NULL = none). `closure`: a cancelled execution's proof of removal (PROTOCOL §7);
        // `archive_grace_until`: the end of the cleanup grace in ms since the epoch (debug
        // archives, §8.4; NULL before the end, or released); `exported_offset`: how far into
        // the spool task-log export got, so a restarted worker resumes there (§8.3).
        for (column, decl) in [
            ("closure", "TEXT"),
            ("archive_grace_until", "INTEGER"),
            ("exported_offset", "INTEGER"),
        ] {
            let has: bool = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('executions') WHERE name = ?1",
                    [column],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)
                .map_err(corrupt)?;
            if !has {
                conn.execute_batch(&format!(
                    "ALTER TABLE executions ADD COLUMN {column} {decl}"
                ))
                .map_err(corrupt)?;
            }
        }
        for side in ["-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(side);
            crate::private::tighten(Path::new(&p), crate::private::FILE_MODE)
                .map_err(|e| io(&e))?;
        }
        Ok(Journal {
            path,
            conn: Mutex::new(conn),
            instance: instance_id(state_dir, true)?,
        })
    }

    /// Opens an existing journal for reading only (`berth logs`), next to a running worker:
    /// never creates, migrates or locks it for writing.
    pub fn open_read_only(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join(FILE);
        if !path.exists() {
            return Err(JournalError::Io {
                path,
                reason:
                    "no journal here (is this the worker's state_dir? pass --state-dir or --config)"
                        .into(),
            });
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| classify(&path, e))?;
        conn.busy_timeout(BUSY_WAIT)
            .map_err(|e| classify(&path, e))?;
        Ok(Journal {
            path,
            conn: Mutex::new(conn),
            instance: instance_id(state_dir, false)?,
        })
    }

    /// Path of the journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same journal standing for another instance id (an owner the operator names, e.g.
    /// `backend.kubernetes.owner`, stable across a lost `state_dir`).
    pub fn with_instance(mut self, instance: String) -> Self {
        self.instance = instance;
        self
    }

    /// The identity of the berth instance owning this `state_dir` ([`INSTANCE_FILE`]).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, JournalError> {
        let conn = self.conn.lock();
        f(&conn).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Records a claim (before anything is started).
    pub fn claim(
        &self,
        execution_id: &str,
        a: &TaskAssignment,
        berth: bool,
    ) -> Result<(), JournalError> {
        let json = serde_json::to_string(a).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO executions (execution_id, task_id, assignment, berth, state, claimed_at)
                 VALUES (?1, ?2, ?3, ?4, 'claimed', ?5)",
                params![execution_id, a.task_id, json, berth, now_ms()],
            )
            .map(|_| ())
        })
    }

    /// Records the container (before it is started).
    pub fn set_container(
        &self,
        execution_id: &str,
        container_id: &str,
        held: bool,
    ) -> Result<(), JournalError> {
        let state = if held { "provisioning" } else { "running" };
        self.with(|c| {
            c.execute(
                "UPDATE executions SET container_id = ?2, state = ?3 WHERE execution_id = ?1",
                params![execution_id, container_id, state],
            )
            .map(|_| ())
        })
    }

    /// Records that provisioning finished and the task's command was released.
    pub fn set_running(&self, execution_id: &str) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE executions SET state = 'running' WHERE execution_id = ?1 AND state = 'provisioning'",
                params![execution_id],
            )
            .map(|_| ())
        })
    }

    /// Records the terminal message (the durable outbox); the slot may be freed after this.
    pub fn finish(&self, execution_id: &str, terminal: &WorkerMessage) -> Result<(), JournalError> {
        self.finish_with_grace(execution_id, terminal, std::time::Duration::ZERO)
    }

    /// [`Journal::finish`], starting the execution's cleanup grace in the same write: the
    /// execution stays owned for debug archives until `grace` from now (PROTOCOL §8.4: the
    /// grace starts before the terminal message is queued).
    pub fn finish_with_grace(
        &self,
        execution_id: &str,
        terminal: &WorkerMessage,
        grace: std::time::Duration,
    ) -> Result<(), JournalError> {
        let frame = terminal.encode_for(true).unwrap_or_default();
        let now = now_ms();
        // No grace: nothing to release later.
        let until = (!grace.is_zero())
            .then(|| now.saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX)));
        self.with(|c| {
            c.execute(
                "UPDATE executions SET state = 'finished', terminal = ?2, finished_at = ?3, archive_grace_until = ?4 WHERE execution_id = ?1",
                params![execution_id, frame, now, until],
            )
            .map(|_| ())
        })
    }

    /// Whether this instance owns `(task_id, execution_id)` for debug archives at `now_ms`:
    /// active (not finished), or finished with its cleanup grace not yet over.
    pub fn archive_owner(
        &self,
        task_id: &str,
        execution_id: &str,
        now_ms: i64,
    ) -> Result<Option<ArchiveOwner>, JournalError> {
        let row: Option<(String, Option<String>, Option<i64>)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT state, container_id, archive_grace_until FROM executions WHERE execution_id = ?1 AND task_id = ?2",
            )?;
            let mut rows = stmt.query(params![execution_id, task_id])?;
            match rows.next()? {
                Some(r) => Ok(Some((r.get(0)?, r.get(1)?, r.get(2)?))),
                None => Ok(None),
            }
        })?;
        let Some((state, container_id, until)) = row else {
            return Ok(None);
        };
        let active = match ExecState::parse(&state) {
            Some(ExecState::Finished) => false,
            Some(_) => true,
            None => return Ok(None),
        };
        if !active && until.is_none_or(|u| u <= now_ms) {
            return Ok(None);
        }
        Ok(Some(ArchiveOwner {
            active,
            started: container_id.is_some(),
            container_id,
        }))
    }

    /// Executions whose cleanup grace is over at `now_ms` and not yet released.
    pub fn graces_over(&self, now_ms: i64) -> Result<Vec<String>, JournalError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT execution_id FROM executions WHERE archive_grace_until IS NOT NULL AND archive_grace_until <= ?1",
            )?;
            let rows = stmt.query_map(params![now_ms], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// How many executions are in their cleanup grace at `now_ms`.
    pub fn graces_open(&self, now_ms: i64) -> Result<u64, JournalError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM executions WHERE state = 'finished' AND archive_grace_until > ?1",
                params![now_ms],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n.max(0) as u64)
    }

    /// Whether the execution is in its cleanup grace at `now_ms` (its spool must stay).
    pub fn in_grace(&self, execution_id: &str, now_ms: i64) -> Result<bool, JournalError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM executions WHERE execution_id = ?1 AND archive_grace_until > ?2",
                params![execution_id, now_ms],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n > 0)
    }

    /// Ends the execution's cleanup grace: it is no longer owned for archives.
    pub fn release_grace(&self, execution_id: &str) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE executions SET archive_grace_until = NULL WHERE execution_id = ?1",
                params![execution_id],
            )
            .map(|_| ())
        })
    }

    /// The server stored transcript bytes `[0, offset)`.
    pub fn set_acked(&self, execution_id: &str, offset: u64) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE executions SET acked_offset = MAX(acked_offset, ?2) WHERE execution_id = ?1",
                params![execution_id, offset as i64],
            )
            .map(|_| ())
        })
    }

    /// Task-log export went through transcript bytes `[0, offset)` (never moves back).
    pub fn set_exported(&self, execution_id: &str, offset: u64) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE executions SET exported_offset = MAX(COALESCE(exported_offset, 0), ?2) WHERE execution_id = ?1",
                params![execution_id, offset as i64],
            )
            .map(|_| ())
        })
    }

    /// Where task-log export of an execution resumes (0 when it never exported).
    pub fn exported(&self, execution_id: &str) -> Result<u64, JournalError> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(exported_offset, 0) FROM executions WHERE execution_id = ?1",
                params![execution_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.unwrap_or(0).max(0) as u64)
        })
    }

    /// The terminal message was acknowledged (or, on oz/1, written).
    pub fn terminal_done(&self, execution_id: &str) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE executions SET terminal_done = 1 WHERE execution_id = ?1",
                params![execution_id],
            )
            .map(|_| ())
        })
    }

    /// A cancellation asked for the execution's proven closure.
    pub fn want_closure(&self, execution_id: &str) -> Result<(), JournalError> {
        self.set_closure(execution_id, "wanted", "closure IS NULL")
    }

    /// The execution's sandbox is proven gone.
    pub fn closure_proven(&self, execution_id: &str) -> Result<(), JournalError> {
        self.set_closure(execution_id, "proven", "closure = 'wanted'")
    }

    /// `execution_closed` was written.
    pub fn closure_sent(&self, execution_id: &str) -> Result<(), JournalError> {
        self.set_closure(execution_id, "sent", "closure IN ('wanted', 'proven')")
    }

    fn set_closure(&self, execution_id: &str, to: &str, from: &str) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                &format!("UPDATE executions SET closure = ?2 WHERE execution_id = ?1 AND {from}"),
                params![execution_id, to],
            )
            .map(|_| ())
        })
    }

    /// Forgets an execution.
    pub fn remove(&self, execution_id: &str) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM executions WHERE execution_id = ?1",
                params![execution_id],
            )
            .map(|_| ())
        })
    }

    fn rows(&self, sql: &str, p: impl rusqlite::Params) -> Result<Vec<ExecRecord>, JournalError> {
        type Raw = (
            String,
            String,
            String,
            bool,
            String,
            Option<String>,
            i64,
            Option<String>,
            bool,
            i64,
            Option<i64>,
            Option<String>,
        );
        let raws: Vec<Raw> = self.with(|c| {
            let mut stmt = c.prepare(sql)?;
            let rows = stmt.query_map(p, |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                ))
            })?;
            rows.collect()
        })?;
        raws.into_iter()
            .map(|r| {
                let bad = |reason: String| JournalError::BadRecord {
                    path: self.path.clone(),
                    execution_id: r.0.clone(),
                    reason,
                };
                let assignment = serde_json::from_str(&r.2)
                    .map_err(|e| bad(format!("its assignment does not decode: {e}")))?;
                let state = ExecState::parse(&r.4)
                    .ok_or_else(|| bad(format!("unknown state {:?}", r.4)))?;
                let closure = Closure::parse(r.11.as_deref())
                    .ok_or_else(|| bad(format!("unknown closure state {:?}", r.11)))?;
                let terminal = match &r.7 {
                    None => None,
                    Some(t) => Some(assigned_from(
                        WorkerMessage::decode(t)
                            .map_err(|e| bad(format!("its result does not decode: {e}")))?,
                        &assignment,
                    )),
                };
                Ok(ExecRecord {
                    execution_id: r.0.clone(),
                    task_id: r.1,
                    assignment,
                    berth: r.3,
                    state,
                    container_id: r.5,
                    acked_offset: r.6.max(0) as u64,
                    terminal,
                    terminal_done: r.8,
                    claimed_at_ms: r.9,
                    finished_at_ms: r.10,
                    closure,
                })
            })
            .collect()
    }

    const COLUMNS: &'static str = "execution_id, task_id, assignment, berth, state, container_id, acked_offset, terminal, terminal_done, claimed_at, finished_at, closure";

    /// Every execution, oldest first.
    pub fn all(&self) -> Result<Vec<ExecRecord>, JournalError> {
        self.rows(
            &format!(
                "SELECT {} FROM executions ORDER BY claimed_at, execution_id",
                Self::COLUMNS
            ),
            [],
        )
    }

    /// One execution.
    pub fn get(&self, execution_id: &str) -> Result<Option<ExecRecord>, JournalError> {
        Ok(self
            .rows(
                &format!(
                    "SELECT {} FROM executions WHERE execution_id = ?1",
                    Self::COLUMNS
                ),
                params![execution_id],
            )?
            .into_iter()
            .next())
    }

    /// The executions of a task, newest first.
    pub fn by_task(&self, task_id: &str) -> Result<Vec<ExecRecord>, JournalError> {
        self.rows(
            &format!(
                "SELECT {} FROM executions WHERE task_id = ?1 ORDER BY claimed_at DESC",
                Self::COLUMNS
            ),
            params![task_id],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureReason;
    use crate::protocol::{Task, TerminalExt};

    fn a(id: &str) -> TaskAssignment {
        TaskAssignment {
            task_id: id.into(),
            task: Some(Task {
                id: id.into(),
                ..Task::default()
            }),
            env_vars: Some([("SECRET".to_string(), "value123".to_string())].into()),
            ..TaskAssignment::default()
        }
    }

    #[test]
    fn a_stored_result_echoes_the_servers_execution_id_on_oz1_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        for (id, assigned) in [("e1", Some("e1")), ("e2", None)] {
            let j = Journal::open(dir.path()).unwrap();
            let mut asg = a("t1");
            asg.execution_id = assigned.map(str::to_string);
            j.claim(id, &asg, false).unwrap();
            let ext = TerminalExt {
                execution_id: id.into(),
                message_id: "m".into(),
                exit_code: Some(0),
                duration_ms: 1,
                transcript_bytes: 0,
                transcript_lost_bytes: 0,
                usage: None,
                failure_details: None,
                assigned: assigned.is_some(),
            };
            let term = WorkerMessage::TaskCompleted {
                task_id: "t1".into(),
                message: "Task completed successfully".into(),
                task_state: None,
                ext: Some(ext),
            };
            j.finish(id, &term).unwrap();
            drop(j);
            let j = Journal::open(dir.path()).unwrap();
            let back = j.get(id).ok().flatten().and_then(|r| r.terminal);
            assert_eq!(back.as_ref(), Some(&term), "{id}");
            let wire = back.map(|t| t.encode()).unwrap_or_default();
            assert_eq!(
                wire.contains(&format!(r#""execution_id":"{id}""#)),
                assigned.is_some(),
                "{wire}"
            );
        }
    }

    #[test]
    fn archive_ownership_lasts_while_active_and_through_the_grace_only() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.claim("e1", &a("t1"), false).unwrap();
        let now = now_ms();
        let owner = j.archive_owner("t1", "e1", now).unwrap().unwrap();
        assert!(owner.active && !owner.started);
        // Another run's id, or another execution of the run: not owned.
        assert_eq!(j.archive_owner("t2", "e1", now).unwrap(), None);
        assert_eq!(j.archive_owner("t1", "e2", now).unwrap(), None);
        j.set_container("e1", "c1", false).unwrap();
        let term = WorkerMessage::TaskCompleted {
            task_id: "t1".into(),
            message: "ok".into(),
            task_state: None,
            ext: None,
        };
        j.finish_with_grace("e1", &term, std::time::Duration::from_secs(60))
            .unwrap();
        let owner = j.archive_owner("t1", "e1", now).unwrap().unwrap();
        assert!(!owner.active);
        assert_eq!(owner.container_id.as_deref(), Some("c1"));
        assert!(j.in_grace("e1", now).unwrap());
        assert_eq!(j.graces_open(now).unwrap(), 1);
        assert!(j.graces_over(now).unwrap().is_empty());
        // It survives a reopen (a restart), and ends with its grace.
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.archive_owner("t1", "e1", now).unwrap().is_some());
        let later = now + 61_000;
        assert_eq!(j.archive_owner("t1", "e1", later).unwrap(), None);
        assert_eq!(j.graces_over(later).unwrap(), ["e1"]);
        j.release_grace("e1").unwrap();
        assert!(j.graces_over(later).unwrap().is_empty());
        assert_eq!(j.archive_owner("t1", "e1", now).unwrap(), None);
        // A plain finish (no grace) is not owned once finished.
        j.claim("e3", &a("t3"), false).unwrap();
        j.finish("e3", &term).unwrap();
        assert_eq!(j.archive_owner("t3", "e3", now_ms()).unwrap(), None);
    }

    #[test]
    fn records_every_transition_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.claim("e1", &a("t1"), true).unwrap();
        j.set_container("e1", "c1", true).unwrap();
        assert_eq!(
            j.get("e1").ok().flatten().map(|r| r.state),
            Some(ExecState::Provisioning)
        );
        j.set_running("e1").unwrap();
        j.set_acked("e1", 10).unwrap();
        j.set_acked("e1", 5).unwrap();
        let term = WorkerMessage::TaskFailed {
            task_id: "t1".into(),
            message: "Failed to execute task: x".into(),
            task_state: None,
            failure_reason: Some(FailureReason::ContainerExit),
            exit_code: Some(2),
            ext: Some(TerminalExt {
                execution_id: "e1".into(),
                message_id: "m1".into(),
                exit_code: Some(2),
                duration_ms: 5,
                transcript_bytes: 10,
                transcript_lost_bytes: 0,
                usage: None,
                failure_details: None,
                assigned: false,
            }),
        };
        j.finish("e1", &term).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        let r = j
            .get("e1")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("record"));
        assert_eq!(r.state, ExecState::Finished);
        assert_eq!(r.container_id.as_deref(), Some("c1"));
        assert_eq!(r.acked_offset, 10, "acks never move backwards");
        assert_eq!(r.terminal, Some(term));
        assert_eq!(r.assignment, a("t1"));
        assert!(r.berth && !r.terminal_done);
        j.terminal_done("e1").unwrap();
        assert!(j.get("e1").ok().flatten().is_some_and(|r| r.terminal_done));
        assert_eq!(j.by_task("t1").map(|v| v.len()).unwrap_or(0), 1);
        // Closure moves forward only: wanted → proven → sent.
        let closure = |j: &Journal| j.get("e1").ok().flatten().map(|r| r.closure);
        assert_eq!(closure(&j), Some(Closure::None));
        j.closure_proven("e1").unwrap();
        assert_eq!(
            closure(&j),
            Some(Closure::None),
            "nothing to prove before a cancel"
        );
        j.want_closure("e1").unwrap();
        assert_eq!(closure(&j), Some(Closure::Wanted));
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(closure(&j), Some(Closure::Wanted), "survives a restart");
        j.closure_proven("e1").unwrap();
        j.want_closure("e1").unwrap();
        assert_eq!(closure(&j), Some(Closure::Proven));
        j.closure_sent("e1").unwrap();
        j.closure_proven("e1").unwrap();
        assert_eq!(closure(&j), Some(Closure::Sent));
        j.remove("e1").unwrap();
        assert!(j.all().unwrap_or_default().is_empty());
    }

    #[test]
    fn a_journal_from_before_closures_gains_the_column_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE executions (
               execution_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, assignment TEXT NOT NULL,
               berth INTEGER NOT NULL, state TEXT NOT NULL, container_id TEXT,
               acked_offset INTEGER NOT NULL DEFAULT 0, terminal TEXT,
               terminal_done INTEGER NOT NULL DEFAULT 0, claimed_at INTEGER NOT NULL,
               finished_at INTEGER);
             INSERT INTO executions (execution_id, task_id, assignment, berth, state, claimed_at)
               VALUES ('e0', 't0', '{\"task_id\":\"t0\"}', 1, 'running', 1);",
        )
        .unwrap();
        drop(old);
        let j = Journal::open(dir.path()).unwrap();
        let r = j
            .get("e0")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("record kept"));
        assert_eq!((r.state, r.closure), (ExecState::Running, Closure::None));
        // It gains the export offset too: none yet, then only forward.
        assert_eq!(j.exported("e0").unwrap(), 0);
        j.set_exported("e0", 120).unwrap();
        j.set_exported("e0", 80).unwrap();
        assert_eq!(j.exported("e0").unwrap(), 120);
        assert_eq!(j.exported("unknown").unwrap(), 0);
        j.want_closure("e0").unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.exported("e0").unwrap(), 120, "survives a restart");
        assert_eq!(
            j.get("e0").ok().flatten().map(|r| r.closure),
            Some(Closure::Wanted)
        );
    }

    #[test]
    fn a_corrupted_file_is_a_clear_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"this is not a sqlite database, it is garbage........................................................................................")
            .unwrap();
        match Journal::open(dir.path()) {
            Err(e @ JournalError::Corrupt { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("journal.sqlite") && msg.contains("move the file aside"),
                    "{msg}"
                );
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a corrupt journal must not open"),
        }
        // Nothing was overwritten.
        let bytes = std::fs::read(dir.path().join(FILE)).unwrap_or_default();
        assert!(bytes.starts_with(b"this is not a sqlite database"));
    }

    #[test]
    fn a_journal_locked_by_another_connection_opens_once_the_lock_is_released() {
        let dir = tempfile::tempdir().unwrap();
        drop(Journal::open(dir.path()).unwrap());
        let path = dir.path().join(FILE);
        let holder = Connection::open(&path).unwrap();
        // An exclusive lock blocks even WAL readers: the worst case a second opener meets.
        holder
            .execute_batch("PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE;")
            .unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            holder
                .execute_batch("COMMIT; PRAGMA locking_mode=NORMAL; SELECT 1 FROM executions;")
                .unwrap();
            drop(holder);
        });
        let j = Journal::open_read_only(dir.path()).unwrap();
        assert!(j.all().unwrap().is_empty());
        drop(j);
        Journal::open(dir.path()).unwrap();
        release.join().unwrap_or_else(|_| panic!("holder thread"));
    }

    #[test]
    fn reading_a_state_dir_without_a_journal_says_so_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        match Journal::open_read_only(dir.path()) {
            Err(e @ JournalError::Io { .. }) => assert!(e.to_string().contains("state_dir"), "{e}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("no journal to open"),
        }
        assert!(!dir.path().join(FILE).exists());
    }
}
