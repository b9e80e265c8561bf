//! `berth dev` as an operator uses it: one persistent state dir, the banner's API address,
//! `berth status`/`tasks`/`logs`/`cancel` finding the dev worker without flags, and a task
//! left running by Ctrl-C re-attached and finished by the next `berth dev` — the real binary,
//! real Docker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{BIN, worker_id};

/// A `berth dev` process, the lines of its banner, and what it printed after it.
struct Dev {
    child: Child,
    banner: Vec<String>,
    later: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Dev {
    fn start(xdg: &Path, worker: &str, image: &str) -> Dev {
        let mut child = Command::new(BIN)
            .args(["dev", "--listen", "127.0.0.1:0", "--worker-id", worker])
            .args(["--demo-image", image, "--api-key", "dev-test-key"])
            .env("XDG_STATE_HOME", xdg)
            .env_remove("BERTH_API")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        while let Some(Ok(l)) = lines.next() {
            let done = l.contains("worker API ");
            banner.push(l);
            if done {
                break;
            }
        }
        assert!(
            banner.iter().any(|l| l.contains("worker API ")),
            "no worker API line in the banner: {banner:?}"
        );
        // Keep reading (the pipe stays open) so later lines can be looked at.
        let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = later.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Dev {
            child,
            banner,
            later,
        }
    }

    /// The first line printed after the banner that contains `text` (waits up to 60 s).
    fn printed(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = self.later.lock().unwrap().iter().find(|l| l.contains(text)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "berth dev never printed {text:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn line(&self, label: &str) -> String {
        self.banner
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .cloned()
            .unwrap_or_else(|| panic!("no {label:?} in {:?}", self.banner))
    }

    /// The control plane's HTTP root.
    fn server(&self) -> String {
        let l = self.line("HTTP API");
        let url = l.split_whitespace().nth(2).unwrap();
        url.trim_end_matches("/v1/tasks").to_string()
    }

    /// Ctrl-C, and wait for the exit.
    fn interrupt(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "berth dev exited with {status:?}");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes what the test made (only its own worker's containers and its own image).
struct Cleanup {
    worker: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=berth.worker_id={}", self.worker))
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

fn cli(xdg: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("XDG_STATE_HOME", xdg)
        .env_remove("BERTH_API")
        .output()
        .unwrap()
}

fn ok(xdg: &Path, args: &[&str]) -> String {
    let out = cli(xdg, args);
    assert!(
        out.status.success(),
        "berth {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The state of `task` in `berth tasks --json`.
fn state_of(xdg: &Path, task: &str) -> Option<String> {
    let rows: Vec<berth::admin::history::HistoryRow> =
        serde_json::from_str(&ok(xdg, &["tasks", "--json"])).unwrap();
    rows.into_iter()
        .find(|r| r.task_id == task)
        .map(|r| r.state)
}

fn wait_for_state(xdg: &Path, task: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = state_of(xdg, task);
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{task} never became {want} (last: {got:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `berth submit --no-wait` of `sh -c cmd` in `image` to `server`: the task id.
fn submit(xdg: &Path, server: &str, image: &str, cmd: &str) -> String {
    let args = [
        "submit",
        "--server",
        server,
        "--image",
        image,
        "--no-wait",
        "--",
        "sh",
        "-c",
        cmd,
    ];
    ok(xdg, &args).trim().to_string()
}

/// A `berth dev` test's XDG home and its worker id and image name (`name` in both), whose
/// containers and image go when the second is dropped.
fn prepared(name: &str) -> (tempfile::TempDir, Cleanup) {
    if !Path::new(berth::runtime::docker::rootfs::DEFAULT_BUSYBOX).exists() {
        panic!(
            "this test builds berth dev's image from /bin/busybox: apt-get install busybox-static"
        );
    }
    berth::control::tls::install_default_provider();
    let xdg = tempfile::tempdir().unwrap();
    let cleanup = Cleanup {
        worker: worker_id(name),
        image: format!("berth-test-{name}-{}:latest", std::process::id()),
    };
    (xdg, cleanup)
}

#[test]
fn dev_keeps_one_state_dir_and_the_verbs_find_its_worker_across_runs() {
    let (xdg, names) = prepared("dev");
    let (worker, image) = (names.worker.clone(), names.image.clone());
    let root = xdg.path().join("berth/dev");

    let dev = Dev::start(xdg.path(), &worker, &image);
    // The banner: the state dir, the worker's API address, a submit hint with the built image.
    assert!(dev.line("state").contains(&root.display().to_string()));
    assert!(
        dev.line("submit a task")
            .contains(&format!("--image {image}"))
    );
    let api = std::fs::read_to_string(root.join("worker-api")).unwrap();
    assert!(dev.line("worker API").contains(api.trim()));
    // status finds the dev worker without flags. The banner can come before the worker's
    // first connection (CI saw "NOT connected (redialling)" at "up 0s"): ask until it is up.
    let mut status = String::new();
    for _ in 0..100 {
        status = ok(xdg.path(), &["status"]);
        if status.contains("connected (berth/1)") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        status.contains(&worker) && status.contains("connected (berth/1)"),
        "{status}"
    );

    // A task left running by Ctrl-C …
    let server = dev.server();
    let kept = submit(
        xdg.path(),
        &server,
        &image,
        "echo before; sleep 4; echo after",
    );
    wait_for_state(xdg.path(), &kept, "running");
    dev.interrupt();
    assert!(
        !root.join("worker-api").exists(),
        "the address file goes with the worker"
    );
    assert!(
        !std::env::temp_dir()
            .join(format!("berth-dev-{}", std::process::id()))
            .exists()
    );
    // … is re-attached and finished by the next run (same dir), its transcript whole.
    let dev = Dev::start(xdg.path(), &worker, &image);
    wait_for_state(xdg.path(), &kept, "succeeded");
    assert_eq!(ok(xdg.path(), &["logs", &kept]), "before\nafter\n");
    // The control plane remembers it too (its state is kept in the same dir).
    let server = dev.server();
    let rec: serde_json::Value =
        serde_json::from_str(&tokio::runtime::Runtime::new().unwrap().block_on(async {
            reqwest::get(format!("{server}/v1/tasks/{kept}"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }))
        .unwrap();
    assert_eq!(rec["state"], "succeeded", "{rec}");

    // cancel through the dev worker's local API, without flags.
    let long = submit(xdg.path(), &server, &image, "sleep 300");
    wait_for_state(xdg.path(), &long, "running");
    let out = cli(xdg.path(), &["cancel", &long]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_state(xdg.path(), &long, "cancelled");
    let unknown = cli(xdg.path(), &["cancel", "task-not-here"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("is not running on this worker"));
    // … and through the control plane's API.
    let other = submit(xdg.path(), &server, &image, "sleep 300");
    wait_for_state(xdg.path(), &other, "running");
    ok(xdg.path(), &["cancel", &other, "--server", &server]);
    wait_for_state(xdg.path(), &other, "cancelled");
    let tasks = ok(xdg.path(), &["tasks"]);
    assert!(
        tasks.starts_with("TASK") && tasks.contains("succeeded") && tasks.contains("cancelled"),
        "{tasks}"
    );
    dev.interrupt();
}

#[test]
fn the_demo_tells_berths_story_only_and_exits_once_its_result_is_acknowledged() {
    let worker = worker_id("demo");
    let image = format!("berth-test-demo-{}:latest", std::process::id());
    let _cleanup = Cleanup {
        worker: worker.clone(),
        image: image.clone(),
    };
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "dev",
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--worker-id",
            &worker,
        ])
        .args(["--demo-image", &image, "--api-key", "dev-test-key"])
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    // berth's story only: no dependency's debug lines at the default level.
    for line in stderr.lines() {
        assert!(
            line.contains("berth"),
            "a line that is not berth's: {line:?}\n{stderr}"
        );
        assert!(!line.contains(" DEBUG "), "a debug line: {line:?}");
    }
    // The demo's own result reached the control plane and was acknowledged before exit.
    assert!(
        stderr.contains("shutdown: every result delivered"),
        "the demo exited with its result still owed:\n{stderr}"
    );
    assert!(!stderr.contains("next start"), "{stderr}");
}

#[test]
fn dev_asks_for_a_debug_archive_and_prints_where_it_landed() {
    let (xdg, names) = prepared("dev-archive");
    let (worker, image) = (names.worker.clone(), names.image.clone());
    let dev = Dev::start(xdg.path(), &worker, &image);
    assert!(dev.line("debug archive").contains("/debug-archive"));
    let server = dev.server();
    let task = submit(
        xdg.path(),
        &server,
        &image,
        "echo archived-line; echo to-stderr >&2",
    );
    wait_for_state(xdg.path(), &task, "succeeded");
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::Client::new()
            .post(format!("{server}/v1/tasks/{task}/debug-archive"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 202);
    let line = dev.printed("debug archive arc-");
    assert!(
        line.contains(&task) && line.contains(" bytes at "),
        "{line}"
    );
    let path = line.rsplit(" bytes at ").next().unwrap();
    let object = std::fs::read_to_string(path).unwrap();
    let root = xdg.path().join("berth/dev/archives");
    assert!(path.starts_with(&root.display().to_string()), "{path}");
    assert!(
        object.contains("archived-line\\n") && object.contains("to-stderr"),
        "{object}"
    );
    assert!(object.lines().all(|l| l.contains("\"kind\":\"data\"")));
    dev.interrupt();
}
