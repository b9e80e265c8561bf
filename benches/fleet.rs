//! Fleet benchmark: what an operator sees of one worker process (the real binary).
//!
//!   cargo bench --bench fleet                  # 200 concurrent sleeping tasks
//!   BERTH_BENCH_TASKS=50 cargo bench --bench fleet
//!
//! 1. start-up to ready (`/readyz` 200) and idle RSS;
//! 2. N sleeping tasks at once: time until all run, against N `docker run -d` (8 at a time,
//!    like a script would) measured in the same run; the worker's RSS with N running;
//! 3. `/v1/status` latency while they run.
//!
//! Prints a table with ratios and writes its section of docs/benchmarks.md; never fails on a
//! time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{BENCH_KEY, IMAGE, Report, control_plane, import_image};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::devserver::ControlPlane;
use berth::devserver::state::{SubmitRequest, TaskState};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn worker(cp: &ControlPlane, dir: &Path, id: &str) -> Child {
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!("worker_id: {id}\nmax_concurrent_tasks: 0\nadmission:\n  min_free_disk: 0\n"),
    )
    .unwrap();
    Command::new(BIN)
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--control-plane-url",
            &cp.ws_url(),
            "--state-dir",
            dir.join("state").to_str().unwrap(),
            "--api-listen",
            dir.join("api.sock").to_str().unwrap(),
            "--log-level",
            "warn",
        ])
        .env("BERTH_API_KEY", BENCH_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn remove_label(filter: &str) {
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!("docker ps -aq --filter {filter} | xargs -r docker rm -f >/dev/null 2>&1"),
        ])
        .status();
}

fn main() {
    let n: usize = std::env::var("BERTH_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    berth::control::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = format!("bench-fleet-{}", std::process::id());
    rt.block_on(async {
        import_image().await;
        let mut r = Report::default();

        // Baseline first, on an idle engine: N `docker run -d`, 8 at a time.
        let t = Instant::now();
        let ok = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "seq {n} | xargs -P 8 -I{{}} docker run -d --label berth.bench=fleet {IMAGE} sleep 300 >/dev/null"
                ),
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "docker run baseline failed");
        let docker_secs = t.elapsed().as_secs_f64();
        remove_label("label=berth.bench=fleet");

        let cp = control_plane().await;
        let sock = dir.path().join("api.sock");
        let http = reqwest::Client::builder()
            .unix_socket(sock.as_path())
            .build()
            .unwrap();
        let t = Instant::now();
        let mut w = worker(&cp, dir.path(), &id);
        let pid = w.id();
        loop {
            let ready = http.get("http://berth/readyz").send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "worker never ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ready_ms = t.elapsed().as_secs_f64() * 1000.0;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle = rss_mib(pid);

        let t = Instant::now();
        let ids: Vec<String> = (0..n)
            .map(|_| {
                cp.submit(SubmitRequest {
                    image: Some(IMAGE.into()),
                    command: vec!["sleep".into(), "300".into()],
                    ..SubmitRequest::default()
                })
                .id
            })
            .collect();
        let mut peak: f64 = 0.0;
        loop {
            let running = ids
                .iter()
                .filter(|i| cp.task(i).is_some_and(|t| t.state == TaskState::Running && t.container_id.is_some()))
                .count();
            peak = peak.max(rss_mib(pid));
            if running == n {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(900), "only {running}/{n} running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let berth_secs = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let loaded = rss_mib(pid);
        let mut lat: Vec<f64> = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            let s = http.get("http://berth/v1/status").send().await.unwrap();
            let body = s.bytes().await.unwrap();
            assert!(!body.is_empty());
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(|a, b| a.total_cmp(b));

        r.line(format!("berth fleet benchmark: one worker process, {n} concurrent `sleep` tasks, image {IMAGE}"));
        r.line(format!("{:<62} {:>12}", "measure", "value"));
        r.line(format!("{:<62} {:>9.0} ms", "start-up: process spawned -> /readyz 200", ready_ms));
        r.line(format!("{:<62} {:>8.1} MiB", "idle RSS (connected, no task)", idle));
        r.line(format!("{:<62} {:>10.1} s", format!("berth: {n} tasks submitted -> all running (started_at)"), berth_secs));
        r.line(format!("{:<62} {:>10.1} s", format!("docker: {n} x `docker run -d`, 8 at a time"), docker_secs));
        r.line(format!("{:<62} {:>10.2} x", "ratio berth / docker run (< 1.0: berth faster)", berth_secs / docker_secs));
        r.line(format!("{:<62} {:>8.1} MiB", format!("worker RSS with {n} tasks running"), loaded));
        r.line(format!("{:<62} {:>8.1} MiB", "worker peak RSS while they started", peak));
        r.line(format!("{:<62} {:>9.1} ms", format!("/v1/status latency p50 ({n} tasks)"), percentile(&lat, 0.5)));
        r.line(format!("{:<62} {:>9.1} ms", "/v1/status latency p99", percentile(&lat, 0.99)));
        r.publish("fleet", "cargo bench --bench fleet");

        let _ = w.kill();
        let _ = w.wait();
        remove_label(&format!("label=berth.worker_id={id}"));
        cp.shutdown();
    });
    let _ = Command::new("docker").args(["rmi", "-f", IMAGE]).output();
}
