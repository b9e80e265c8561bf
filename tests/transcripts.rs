//! Transcripts that are never lost, and a worker that survives its own restart: real Docker,
//! the embedded control plane over loopback, and the real binary where a process must die.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth::devserver::ControlPlane;
use berth::devserver::state::{SubmitRequest, TaskRecord, TaskState};
use berth::protocol::Stream;
use support::*;

/// The stdout bytes of a stored transcript.
fn stdout_of(cp: &ControlPlane, id: &str) -> Vec<u8> {
    let (runs, _) = cp.transcript_since(id, 0).unwrap();
    runs.into_iter()
        .filter(|(_, s, _)| *s == Stream::Stdout)
        .flat_map(|(_, _, b)| b)
        .collect()
}

/// Waits for the task's end and its complete transcript.
async fn complete(cp: &ControlPlane, id: &str) -> TaskRecord {
    until("task complete with its whole transcript", || {
        cp.task(id).is_some_and(|t| t.complete())
    })
    .await;
    cp.task(id).unwrap()
}

fn run_task(cp: &ControlPlane, script: &str, env: &[(&str, &str)]) -> TaskRecord {
    cp.submit(SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..SubmitRequest::default()
    })
}

/// 40 batches of 1000 numbered lines, 50 ms apart: deterministic and long enough to be
/// interrupted mid-stream.
const GENERATOR: &str =
    "i=0; while [ $i -lt 40 ]; do seq $((i*1000)) $((i*1000+999)); sleep 0.05; i=$((i+1)); done";

fn generated() -> Vec<u8> {
    (0..40_000)
        .map(|n| format!("{n}\n"))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_byte_and_reports_exactly_once() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id("kill9");
    let _cleanup = Cleanup(id.clone());
    let mut first = worker_process(&cp, &id, state.path(), &[]);
    until("worker connected", || !cp.workers().is_empty()).await;
    let t = run_task(&cp, GENERATOR, &[]);
    until("output flowing", || {
        cp.task(&t.id).is_some_and(|t| t.transcript_bytes > 20_000)
    })
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(
        !cp.task(&t.id).unwrap().state.is_terminal(),
        "the task must outlive the worker"
    );
    let mut second = worker_process(&cp, &id, state.path(), &[]);
    until(
        "the restarted worker says hello with the task it holds",
        || cp.workers().first().is_some_and(|w| w.held == 1),
    )
    .await;
    let done = complete(&cp, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(done.terminal_distinct, 1, "exactly one terminal message");
    let got = stdout_of(&cp, &t.id);
    assert_eq!(got.len(), generated().len());
    assert!(
        got == generated(),
        "stored stdout differs from what the container printed"
    );
    // The local copy (`berth logs`) holds the same transcript.
    let logs = Command::new(BIN)
        .args(["logs", &t.id, "--state-dir", state.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(logs.status.success());
    assert!(logs.stdout == generated());
    second.kill().unwrap();
    second.wait().unwrap();
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restart_mid_stream_loses_and_doubles_nothing() {
    let env = Env::start("cp-restart", EnvOptions::default()).await;
    let t = run_task(&env.cp, GENERATOR, &[]);
    until("output flowing", || {
        env.cp
            .task(&t.id)
            .is_some_and(|t| t.transcript_bytes > 20_000)
    })
    .await;
    let version = Some(berth::protocol::worker_version());
    let capabilities = Some(berth::protocol::WORKER_CAPABILITIES.to_string());
    assert_eq!(
        env.cp.workers()[0].version,
        version,
        "X-Warp-Worker-Version on the first dial"
    );
    assert_eq!(
        env.cp.workers()[0].capabilities,
        capabilities,
        "X-Warp-Worker-Capabilities on the first dial"
    );
    let cp2 = env.cp.restart(Duration::from_millis(700)).await.unwrap();
    let done = complete(&cp2, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.terminal_distinct, 1);
    assert_eq!(cp2.workers()[0].version, version, "and on the redial");
    assert_eq!(
        cp2.workers()[0].capabilities,
        capabilities,
        "capabilities on the redial too"
    );
    assert!(stdout_of(&cp2, &t.id) == generated());
    cp2.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_preserve_mode_leaves_the_task_running_for_the_next_worker() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id("preserve");
    let _cleanup = Cleanup(id.clone());
    let mut first = worker_process(&cp, &id, state.path(), &[]);
    until("worker connected", || !cp.workers().is_empty()).await;
    let t = run_task(&cp, "echo before; sleep 4; echo after", &[]);
    until("running", || stdout_of(&cp, &t.id) == b"before\n").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || first.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "preserve shutdown must be quick"
    );
    assert_eq!(
        containers_of_task(&t.id).len(),
        1,
        "the container must keep running"
    );
    assert!(!cp.task(&t.id).unwrap().state.is_terminal());
    let mut second = worker_process(&cp, &id, state.path(), &[]);
    let done = complete(&cp, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(done.terminal_distinct, 1);
    assert_eq!(stdout_of(&cp, &t.id), b"before\nafter\n");
    assert!(containers_of_task(&t.id).is_empty());
    second.kill().unwrap();
    second.wait().unwrap();
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_output_and_nul_bytes_round_trip_byte_identical() {
    let env = Env::start("binary", EnvOptions::default()).await;
    // Every byte value 0..=255 four times, then invalid UTF-8 sequences and NULs.
    let script = "n=0; while [ $n -lt 4 ]; do i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done; n=$((n+1)); done; printf '\\377\\376\\000abc\\000\\342\\234'";
    let t = run_task(&env.cp, script, &[]);
    let done = complete(&env.cp, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let mut want: Vec<u8> = Vec::new();
    for _ in 0..4 {
        want.extend(0..=255u8);
    }
    want.extend([0xff, 0xfe, 0, b'a', b'b', b'c', 0, 0xe2, 0x9c]);
    assert_eq!(stdout_of(&env.cp, &t.id), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_redacted_even_when_split_across_reads() {
    let env = Env::start("redact", EnvOptions::default()).await;
    // The engine splits lines at 16 KiB: the secret straddles two log entries.
    let script = "head -c 16380 /dev/zero | tr '\\000' a; printf 'supersecretvalue\\n'; echo \"short=$SHORT\"; head -c 40000 /dev/zero | tr '\\000' b; echo; printf 'no newline at the end'";
    let t = run_task(
        &env.cp,
        script,
        &[("TOKEN", "supersecretvalue"), ("SHORT", "abc")],
    );
    let done = complete(&env.cp, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded);
    let mut want = "a".repeat(16380).into_bytes();
    want.extend(b"[REDACTED]\nshort=abc\n");
    want.extend("b".repeat(40000).into_bytes());
    want.extend(b"\nno newline at the end");
    let got = stdout_of(&env.cp, &t.id);
    assert!(
        got == want,
        "got {:?}",
        String::from_utf8_lossy(&got[16000..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_beyond_the_budget_keeps_the_head_and_the_tail() {
    let env = Env::start(
        "budget",
        EnvOptions {
            yaml: "transcript:\n  max_bytes: 64KiB\n  tail_bytes: 8KiB\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let t = run_task(&env.cp, "seq 1 100000", &[]);
    let done = complete(&env.cp, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded);
    let all: Vec<u8> = (1..=100_000)
        .map(|n| format!("{n}\n"))
        .collect::<String>()
        .into_bytes();
    let (runs, _) = env.cp.transcript_since(&t.id, 0).unwrap();
    let text: Vec<u8> = runs.iter().flat_map(|(_, _, b)| b.clone()).collect();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("bytes were elided; the last 8192 bytes follow"),
        "{}",
        &text[text.len().saturating_sub(9000)..]
    );
    let out = stdout_of(&env.cp, &t.id);
    // The head: everything up to the budget (minus berth's own lines before it).
    assert!(all.starts_with(&out[..60_000]));
    // After the elision line: exactly tail_bytes, the end of what the task printed followed
    // by berth's exit line.
    let marker = "bytes follow\n";
    let after = &text[text.find(marker).unwrap() + marker.len()..];
    assert_eq!(after.len(), 8192);
    let exit_line = "[berth] container exited with status 0\n";
    // Berth's exit line, then (when a sample was taken) its usage line, end the transcript.
    let exit_at = after
        .rfind(exit_line)
        .unwrap_or_else(|| panic!("{after:?}"));
    let rest = &after[exit_at + exit_line.len()..];
    assert!(
        rest.is_empty() || (rest.starts_with("[berth] usage: ") && rest.matches('\n').count() == 1),
        "{after:?}"
    );
    let printed_tail = &after[..exit_at];
    assert!(all.ends_with(printed_tail.as_bytes()));
    assert!(out.len() < 64 * 1024 + 8192);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oz_server_never_sees_berth_messages_but_the_transcript_is_kept_locally() {
    let env = Env::start(
        "oz-local",
        EnvOptions {
            accept_berth: false,
            ..EnvOptions::default()
        },
    )
    .await;
    // On oz/1 the agent entrypoint runs (the berth/1 command is ignored): use the fake agent.
    let t = env.cp.submit(SubmitRequest {
        image: Some(BUSYBOX.into()),
        sidecar_image: Some(SIDECAR.into()),
        ..SubmitRequest::default()
    });
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(
        done.transcript_bytes, 0,
        "oz/1 servers never receive task_output"
    );
    assert_eq!(
        done.container_id, None,
        "oz/1 servers never receive task_started"
    );
    assert_eq!(
        env.cp.workers().remove(0).statuses,
        0,
        "oz/1 servers never receive worker_status"
    );
    let state = std::env::temp_dir().join(format!("berth-test-{}", env.worker_id));
    let logs = Command::new(BIN)
        .args(["logs", &t.id, "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&logs.stdout).starts_with("fake agent ran with "),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_short_tasks_each_report_once_and_leave_no_spool_after_retention() {
    let env = Env::start(
        "many",
        EnvOptions {
            max_concurrent_tasks: 8,
            // No cleanup grace (PROTOCOL §8.4 keeps a spool through it): retention alone.
            yaml: "transcript:\n  retention: 1s\nidle_on_complete: 0s\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let ids: Vec<String> = (0..200)
        .map(|i| run_task(&env.cp, &format!("echo task {i}"), &[]).id)
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let t = complete(&env.cp, id).await;
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
        assert_eq!((t.terminal_received, t.terminal_distinct), (1, 1), "{t:?}");
        assert_eq!(stdout_of(&env.cp, id), format!("task {i}\n").into_bytes());
    }
    let dir = std::env::temp_dir()
        .join(format!("berth-test-{}", env.worker_id))
        .join("transcripts");
    // (The dot-named disk reserve is not a spool.)
    until("spools removed after retention", || {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .all(|e| e.file_name().to_string_lossy().starts_with('.'))
            })
            .unwrap_or(true)
    })
    .await;
}

#[test]
fn a_corrupt_journal_stops_the_worker_with_the_file_and_the_fix() {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("journal.sqlite"), vec![b'x'; 4096]).unwrap();
    let out = Command::new(BIN)
        .args([
            "run",
            "--worker-id",
            "h1",
            "--control-plane-url",
            "ws://127.0.0.1:9/ws",
            "--state-dir",
            state.path().to_str().unwrap(),
        ])
        .env("BERTH_API_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("journal.sqlite") && err.contains("move the file aside"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(state.path().join("journal.sqlite")).unwrap(),
        vec![b'x'; 4096],
        "never reset silently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_rejects_new_work_until_resume_and_hello_and_started_are_sent() {
    let env = Env::start("drain", EnvOptions::default()).await;
    assert_eq!(
        env.cp.workers()[0].held,
        0,
        "worker_hello arrived and held nothing"
    );
    env.cp.set_draining(&env.worker_id, true);
    let t = run_task(&env.cp, "echo after resume", &[]);
    until("rejected while draining", || {
        env.cp.task(&t.id).is_some_and(|t| t.rejections >= 1)
    })
    .await;
    assert_eq!(env.cp.task(&t.id).unwrap().state, TaskState::Queued);
    env.cp.set_draining(&env.worker_id, false);
    let done = complete(&env.cp, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded);
    assert!(
        done.container_id.is_some(),
        "task_started reached the server"
    );
    assert_eq!(stdout_of(&env.cp, &t.id), b"after resume\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_streams_stdout_and_stderr_to_the_terminal() {
    let env = Env::start("stream", EnvOptions::default()).await;
    let server = env.cp.http_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "submit",
                "--server",
                &server,
                "--image",
                BUSYBOX,
                "--",
                "sh",
                "-c",
                "echo to-stdout; echo to-stderr >&2; exit 3",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("to-stdout\n"), "{stdout}");
    assert!(
        stderr.contains("to-stderr\n") && stderr.contains("[berth] container exited with status 3"),
        "{stderr}"
    );
}

/// A tmpfs mount removed on drop (also when the test panics).
struct Tmpfs(std::path::PathBuf);
impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str()?,
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args([
                "-o",
                &format!("remount,size={size}"),
                self.0.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success());
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", self.0.to_str().unwrap()])
            .status();
    }
}

/// A test environment whose `state_dir` is a tmpfs of `size` (`None`, said on stderr, where
/// mounting needs root we do not have). Bind `_dir` first so it drops last, after the unmount.
struct DiskEnv {
    env: Env,
    fs: Tmpfs,
    _dir: tempfile::TempDir,
}

impl DiskEnv {
    async fn start(name: &str, size: &str, yaml: &str) -> Option<DiskEnv> {
        let opts = EnvOptions {
            yaml: yaml.into(),
            ..EnvOptions::default()
        };
        DiskEnv::start_with(name, size, opts).await
    }

    async fn start_with(name: &str, size: &str, opts: EnvOptions) -> Option<DiskEnv> {
        let dir = tempfile::tempdir().unwrap();
        let Some(fs) = Tmpfs::mount(dir.path(), size) else {
            eprintln!(
                "SKIPPED: mounting a tmpfs needs root (CI runs as root); disk-full behaviour not exercised here"
            );
            return None;
        };
        let env = Env::start(
            name,
            EnvOptions {
                overrides: berth::config::Overrides {
                    state_dir: Some(dir.path().to_path_buf()),
                    ..Default::default()
                },
                ..opts
            },
        )
        .await;
        Some(DiskEnv { env, fs, _dir: dir })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_state_dir_delays_the_transcript_but_loses_nothing() {
    let Some(DiskEnv { _dir, fs, env }) = DiskEnv::start("diskfull", "1m", "").await else {
        return;
    };
    let t = run_task(&env.cp, "seq 1 400000", &[]);
    // The task itself is unaffected: its container runs to the end although the spool is full.
    until("container started", || {
        env.cp.task(&t.id).is_some_and(|t| t.container_id.is_some())
    })
    .await;
    let cid = env.cp.task(&t.id).unwrap().container_id.clone().unwrap();
    until("container exited", || {
        let o = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", &cid])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim() == "false"
    })
    .await;
    assert!(
        !env.cp.task(&t.id).unwrap().state.is_terminal(),
        "the result waits for the whole transcript"
    );
    assert!(env.cp.task(&t.id).unwrap().transcript_bytes < 1 << 20);
    fs.resize("64m");
    let done = complete(&env.cp, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let want: Vec<u8> = (1..=400_000)
        .map(|n| format!("{n}\n"))
        .collect::<String>()
        .into_bytes();
    assert!(
        stdout_of(&env.cp, &t.id) == want,
        "transcript differs after the disk was full"
    );
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_logs_follow_prints_until_the_transcript_ends() {
    let env = Env::start("follow", EnvOptions::default()).await;
    let t = run_task(&env.cp, "echo one; sleep 1; echo two", &[]);
    until("running", || stdout_of(&env.cp, &t.id) == b"one\n").await;
    let state = std::env::temp_dir().join(format!("berth-test-{}", env.worker_id));
    let id = t.id.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "logs",
                &id,
                "--follow",
                "--state-dir",
                state.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    // It returned on its own, after the end of the transcript, with everything in it.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[berth] container exited with status 0")
    );
}

/// Extra worker YAML for the disk-full tests.
const DISK_PATIENCE: &str = "transcript:\n  full_disk_patience: 2s\n";

/// 3000 numbered lines on stdout and on stderr, interleaved line by line, pausing after every
/// 100: the shape of output that lost whole lines across SIGKILLs (issue 8).
const INTERLEAVED: &str = "i=1; while [ $i -le 3000 ]; do echo \"out $i abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP\"; echo \"err $i\" >&2; [ $((i%100)) -eq 0 ] && sleep 0.3; i=$((i+1)); done; true";

fn interleaved(stream: Stream) -> Vec<u8> {
    (1..=3000)
        .map(|i| match stream {
            Stream::Stdout => {
                format!("out {i} abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP\n")
            }
            _ => format!("err {i}\n"),
        })
        .collect::<String>()
        .into_bytes()
}

/// The bytes of one stream of a stored transcript, checking that offsets are contiguous.
fn stream_of(cp: &ControlPlane, id: &str, stream: Stream) -> Vec<u8> {
    let (runs, _) = cp.transcript_since(id, 0).unwrap();
    let mut next = 0u64;
    for (offset, _, bytes) in &runs {
        assert_eq!(*offset, next, "transcript offsets are contiguous");
        next += bytes.len() as u64;
    }
    runs.into_iter()
        .filter(|(_, s, _)| *s == stream)
        .flat_map(|(_, _, b)| b)
        .collect()
}

/// The first line that differs, for a readable failure.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let g: Vec<&[u8]> = got.split(|b| *b == b'\n').collect();
    let w: Vec<&[u8]> = want.split(|b| *b == b'\n').collect();
    for (i, line) in w.iter().enumerate() {
        if g.get(i) != Some(line) {
            return format!(
                "line {i}: want {:?}, got {:?}",
                String::from_utf8_lossy(line),
                g.get(i).map(|l| String::from_utf8_lossy(l).into_owned())
            );
        }
    }
    format!("got {} bytes, want {}", got.len(), want.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_during_interleaved_output_loses_and_doubles_no_line() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id("kill9x");
    let _cleanup = Cleanup(id.clone());
    let mut worker = worker_process(&cp, &id, state.path(), &[]);
    until("worker connected", || !cp.workers().is_empty()).await;
    let t = run_task(&cp, INTERLEAVED, &[]);
    let total = (interleaved(Stream::Stdout).len() + interleaved(Stream::Stderr).len()) as u64;
    // Ten kills at random points of the output, so some land in a pause and some mid-burst.
    let mut fractions: Vec<u64> = (0..10).map(|_| rand::random_range(3..92)).collect();
    fractions.sort_unstable();
    for (n, fraction) in fractions.into_iter().enumerate() {
        let at = total * fraction / 100;
        until("output flowing", || {
            cp.task(&t.id)
                .is_some_and(|t| t.transcript_bytes > at || t.state.is_terminal())
        })
        .await;
        let before = cp.workers().first().map(|w| w.connected_at);
        worker.kill().unwrap(); // SIGKILL
        worker.wait().unwrap();
        worker = worker_process(&cp, &id, state.path(), &[]);
        until("the restarted worker is connected", || {
            cp.workers()
                .first()
                .is_some_and(|w| Some(w.connected_at) != before)
        })
        .await;
        eprintln!("kill {n} at {at} bytes");
    }
    let done = complete(&cp, &t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(done.terminal_distinct, 1, "exactly one terminal message");
    for stream in [Stream::Stdout, Stream::Stderr] {
        let got = stream_of(&cp, &t.id, stream);
        let want = interleaved(stream);
        assert!(
            got == want,
            "{stream:?} differs from what the task wrote: {}",
            first_difference(&got, &want)
        );
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    cp.shutdown();
}

/// Numbered lines in bursts: unique lines show any misplaced resume point as a doubled or
/// missing number; `seq` writes in blocks, so a burst often ends mid-line.
const NUMBERED: &str =
    "i=0; while [ $i -lt 60 ]; do seq $((i*10000)) $((i*10000+9999)); i=$((i+1)); sleep 0.1; done";

fn numbered() -> Vec<u8> {
    (0..600_000)
        .map(|n| format!("{n}\n"))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_resume_anchors_resumes_from_the_anchor_with_no_byte_lost_or_doubled() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id("anchor");
    let _cleanup = Cleanup(id.clone());
    let yaml = "transcript:\n  anchor_every: 1MiB\n";
    let debug = ["--log-level", "info,berth=debug", "--log-format", "json"];
    let mut first = Berth(worker_process_with(&cp, &id, state.path(), &debug, yaml));
    until("worker connected", || !cp.workers().is_empty()).await;
    let t = run_task(&cp, NUMBERED, &[]);
    let log = state.path().with_extension("log");
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("transcript resume anchor"))
            .map(str::to_string)
            .collect()
    };
    let anchored = || {
        lines()
            .iter()
            .filter(|l| !l.contains(r#""streams":0"#))
            .count()
    };
    until("two resume anchors placed", || anchored() >= 2).await;
    first.0.kill().unwrap(); // SIGKILL
    for l in lines() {
        eprintln!("{l}");
    }
    first.0.wait().unwrap();
    assert!(
        !cp.task(&t.id).unwrap().state.is_terminal(),
        "the task must outlive the worker"
    );
    // A kill can land while the container is frozen for an anchor: freeze it as such a kill
    // would leave it. The restarted worker must thaw it, or the task would never finish.
    for c in containers_of(&id) {
        let out = Command::new("docker").args(["pause", &c]).output().unwrap();
        assert!(
            out.status.success(),
            "docker pause: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let second = Berth(worker_process_with(&cp, &id, state.path(), &debug, yaml));
    // A liveness bound, not a speed check. The restarted worker reads the engine's log from a
    // minute before its marks, so the whole of this short task's 600,000 entries; Docker 20.10
    // ends a follow early once the container exits, and the plain read after it goes over them
    // again. A debug build does some 30,000 entries a second here, and half that with the rest
    // of this file's tests on two cores: 60 s was too tight on CI.
    let finished = tokio::time::timeout(Duration::from_secs(180), async {
        while !cp.task(&t.id).is_some_and(|t| t.complete()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if finished.is_err() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
        for c in containers_of(&id) {
            let out = Command::new("docker")
                .args(["inspect", "-f", "{{json .State}}", &c])
                .output()
                .unwrap();
            eprintln!("container {c}: {}", String::from_utf8_lossy(&out.stdout));
        }
        panic!(
            "the restarted worker did not finish the task: {:?}",
            cp.task(&t.id)
        );
    }
    let done = cp.task(&t.id).unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let got = stream_of(&cp, &t.id, Stream::Stdout);
    let want = numbered();
    assert!(
        got == want,
        "stdout differs from what the task wrote: {}",
        first_difference(&got, &want)
    );
    stop(second);
    cp.shutdown();
}

/// The bytes every `system` line of a transcript announces as lost.
fn announced_lost(system: &str) -> u64 {
    system
        .lines()
        .filter_map(|l| {
            l.split(" bytes of output were lost")
                .next()
                .filter(|_| l.contains("were lost"))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A transcript's stored stdout bytes and its `system` text.
fn stored_and_system(cp: &ControlPlane, id: &str) -> (u64, String) {
    let (runs, _) = cp.transcript_since(id, 0).unwrap();
    let stored = runs
        .iter()
        .filter(|(_, s, _)| *s == Stream::Stdout)
        .map(|(_, _, b)| b.len() as u64)
        .sum();
    let system = runs
        .iter()
        .filter(|(_, s, _)| *s == Stream::System)
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    (stored, system)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_that_stays_full_counts_every_lost_byte_in_the_transcript_and_result() {
    let Some(DiskEnv { _dir, fs: _fs, env }) =
        DiskEnv::start("diskstays", "4m", DISK_PATIENCE).await
    else {
        return;
    };
    // 20 MB of 4 KB lines into a 4 MiB state_dir that never gets more room.
    let t = run_task(
        &env.cp,
        "i=0; while [ $i -lt 5000 ]; do head -c 3999 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done",
        &[],
    );
    let want: u64 = 5000 * 4000;
    let done = complete(&env.cp, &t.id).await;
    let (stored, system) = stored_and_system(&env.cp, &t.id);
    // Every gap is announced where it happened, with its size; the sizes and the stored
    // bytes add up to what the task printed.
    let announced = announced_lost(&system);
    assert!(
        stored < want,
        "the disk cannot hold it all ({stored} of {want})"
    );
    assert!(announced > 0, "no system line announces the gap: {system}");
    assert_eq!(
        stored + announced,
        want,
        "stored + announced lost = printed\n{system}"
    );
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains(&format!("{announced} bytes")) && msg.contains("state_dir"),
        "the result says what was lost: {msg}"
    );
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_at_trace_in_text_or_json() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let secrets = [
        ("GITHUB_TOKEN", "ghp_s3cr3tTokenValue"),
        ("DB_PASSWORD", "hunter2-but-longer"),
        ("OTHER", "quote\"and\\slash"),
        // The run's tokens, also sent as headers of its setup events.
        ("WARP_API_KEY", "run-api-key-s3cr3t"),
        ("WARP_WORKLOAD_TOKEN", "workload-token-s3cr3t"),
    ];
    let root = cp.http_url();
    for format in ["text", "json"] {
        let state = tempfile::tempdir().unwrap();
        let id = worker_id(&format!("trace-{format}"));
        let _cleanup = Cleanup(id.clone());
        let mut w = worker_process(
            &cp,
            &id,
            state.path(),
            &[
                // Every crate at trace (a bare level would be berth's alone): the HTTP and
                // WebSocket stacks' own lines must not carry a secret either.
                "--log-level",
                "trace,berth=trace",
                "--log-format",
                format,
                "--server-root-url",
                &root,
            ],
        );
        until("worker connected", || {
            cp.workers().iter().any(|x| x.worker_id == id)
        })
        .await;
        let t = run_task(&cp, "echo done", &secrets);
        let done = complete(&cp, &t.id).await;
        assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
        until("setup events posted with the tokens", || {
            cp.task(&t.id).is_some_and(|t| t.events.len() >= 2)
        })
        .await;
        w.kill().unwrap();
        w.wait().unwrap();
        let log = std::fs::read_to_string(state.path().with_extension("log")).unwrap();
        assert!(
            log.len() > 10_000,
            "trace logging is on ({} bytes)",
            log.len()
        );
        for s in ["proc-key"].iter().chain(secrets.iter().map(|(_, v)| v)) {
            let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
            for form in [s.to_string(), escaped] {
                let n = log.matches(form.as_str()).count();
                assert_eq!(n, 0, "{format} log holds {form:?} {n} times");
            }
        }
        assert!(
            log.contains("[REDACTED]"),
            "redaction happened in the {format} log"
        );
    }
    cp.shutdown();
}

/// Paths under `dir` (recursively) whose mode lets group or others read, write or enter.
fn not_private(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut bad = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        if mode & 0o077 != 0 {
            bad.push(format!("{} {:o}", d.display(), mode & 0o777));
        }
        for e in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.permissions().mode() & 0o077 != 0 {
                bad.push(format!(
                    "{} {:o}",
                    e.path().display(),
                    m.permissions().mode() & 0o777
                ));
            }
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_under_state_dir_is_private_while_running_and_after() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let parent = tempfile::tempdir().unwrap();
    let state = parent.path().join("state");
    let id = worker_id("modes");
    let _cleanup = Cleanup(id.clone());
    // Outside systemd: whatever umask the operator's shell has.
    let mut w = worker_process(&cp, &id, &state, &[]);
    until("worker connected", || {
        cp.workers().iter().any(|x| x.worker_id == id)
    })
    .await;
    let t = run_task(
        &cp,
        "echo hello; sleep 3; echo bye",
        &[("TOKEN", "s3cr3t-value")],
    );
    until("task running", || {
        cp.task(&t.id).is_some_and(|t| t.transcript_bytes > 0)
    })
    .await;
    let running = not_private(&state);
    assert!(
        state.join("journal.sqlite-wal").exists(),
        "the journal's WAL exists while running"
    );
    complete(&cp, &t.id).await;
    let after = not_private(&state);
    w.kill().unwrap();
    w.wait().unwrap();
    assert!(
        running.is_empty(),
        "readable by group/others while running: {running:?}"
    );
    assert!(
        after.is_empty(),
        "readable by group/others after the task: {after:?}"
    );
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_journal_record_stops_no_container_and_names_the_fix() {
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let state = tempfile::tempdir().unwrap();
    let id = worker_id("badjournal");
    let _cleanup = Cleanup(id.clone());
    let mut w = worker_process(&cp, &id, state.path(), &[]);
    until("worker connected", || !cp.workers().is_empty()).await;
    let t = run_task(&cp, "sleep 60", &[]);
    until("container started", || {
        cp.task(&t.id).is_some_and(|t| t.container_id.is_some())
    })
    .await;
    let cid = cp.task(&t.id).unwrap().container_id.clone().unwrap();
    w.kill().unwrap();
    w.wait().unwrap();
    let running = || {
        let o = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", &cid])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim() == "true"
    };
    // A record a newer version wrote (unknown state), then a damaged one (assignment).
    for (column, value) in [("state", "closing"), ("assignment", "{not json")] {
        let db = rusqlite::Connection::open(state.path().join("journal.sqlite")).unwrap();
        let original: String = db
            .query_row(&format!("SELECT {column} FROM executions"), [], |r| {
                r.get(0)
            })
            .unwrap();
        db.execute(&format!("UPDATE executions SET {column} = ?1"), [value])
            .unwrap();
        drop(db);
        let mut again = worker_process(&cp, &id, state.path(), &[]);
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(s) = again.try_wait().unwrap() {
                break Some(s);
            }
            if started.elapsed() > Duration::from_secs(30) {
                again.kill().unwrap();
                again.wait().unwrap();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let status =
            status.unwrap_or_else(|| panic!("berth started on an unreadable journal ({column})"));
        let log = std::fs::read_to_string(state.path().with_extension("log")).unwrap();
        assert!(!status.success(), "berth must refuse to start ({column})");
        assert!(
            log.contains("is unreadable") && log.contains("touches no container"),
            "the log names the problem and the fix ({column}): {log}"
        );
        assert!(running(), "the task's container was stopped ({column})");
        let db = rusqlite::Connection::open(state.path().join("journal.sqlite")).unwrap();
        db.execute(&format!("UPDATE executions SET {column} = ?1"), [original])
            .unwrap();
    }
    // Repaired: the task is adopted again and finishes normally.
    let mut w = worker_process(&cp, &id, state.path(), &[]);
    until("the restarted worker holds the task", || {
        cp.workers().first().is_some_and(|w| w.held == 1)
    })
    .await;
    assert!(running());
    cp.cancel(&t.id).unwrap();
    let done = complete(&cp, &t.id).await;
    assert!(done.state.is_terminal());
    w.kill().unwrap();
    w.wait().unwrap();
    cp.shutdown();
}

/// The field report: a full `state_dir`, output given up after the patience, and capture still
/// reading the engine's log when its bound after the container's exit ran out. The engine hands
/// short lines back at some 100k entries a second, far slower than a task prints them, so the
/// bound (shortened here from 60 s to 1 s) is reached with much of the log unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_capture_that_cannot_drain_in_time_counts_what_it_did_not_read_as_lost() {
    let opts = EnvOptions {
        yaml: "transcript:\n  full_disk_patience: 1s\n".into(),
        capture_drain: Some(Duration::from_secs(1)),
        ..EnvOptions::default()
    };
    let Some(DiskEnv { _dir, fs: _fs, env }) = DiskEnv::start_with("diskdrain", "4m", opts).await
    else {
        return;
    };
    // 40 MB of 100-byte lines (400,000 log entries) into a 4 MiB state_dir.
    let t = run_task(
        &env.cp,
        "l=$(head -c 99 /dev/zero | tr '\\0' x); yes \"$l\" | head -c 40000000",
        &[],
    );
    let want: u64 = 40_000_000;
    let done = complete(&env.cp, &t.id).await;
    let (stored, system) = stored_and_system(&env.cp, &t.id);
    let announced = announced_lost(&system);
    assert!(
        system.contains("did not finish within"),
        "capture drained in time: this test no longer reaches the bound\n{system}"
    );
    assert_eq!(
        stored + announced,
        want,
        "stored + announced lost = printed (stored {stored}, announced {announced})\n{system}"
    );
    assert!(
        !system.contains("may be missing") && !system.contains("at least"),
        "the gap is counted, not guessed at\n{system}"
    );
    let msg = done.message.clone().unwrap_or_default();
    assert!(
        msg.contains(&format!("{announced} bytes")),
        "the result says what was lost: {msg}"
    );
    let metrics = env.metrics().await;
    assert!(
        metrics.contains(&format!("berth_transcript_lost_bytes_total {announced}\n")),
        "the metric counts what was lost ({announced})"
    );
    drop(env);
}
