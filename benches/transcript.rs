//! Transcript benchmark: one task printing 200 MB as fast as it can, end to end into the
//! embedded control plane, against `docker run IMAGE CMD > /dev/null` (attached) and against
//! `docker logs CONTAINER > /dev/null` of the same output in the same run; what the engine's two
//! output paths (attach stream, timestamped log read) deliver through bollard; then four such
//! tasks at once through berth and through four attached `docker run`s, with the worker's peak
//! RSS.
//!
//!   cargo bench --bench transcript                 # 200 MB
//!   BERTH_BENCH_MB=50 cargo bench --bench transcript
//!   BERTH_BENCH_ROUNDS=5 cargo bench --bench transcript  # alternated rounds (default 3)
//!
//! The worker runs as its own process (the real binary) so its RSS is its own. Prints figures
//! and ratios; never fails on a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{BENCH_KEY, IMAGE, Report, control_plane, import_image};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::devserver::ControlPlane;
use berth::devserver::state::SubmitRequest;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

fn script(bytes: u64) -> String {
    // ~80-byte lines, like a chatty agent.
    format!(
        "yes 'berth transcript benchmark line: the quick brown fox jumps over the lazy dog 0123' | head -c {bytes}"
    )
}

/// CPU seconds of one process and of its waited-for children, from `/proc/PID/stat`.
fn proc_cpu(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let tick = 100.0; // USER_HZ on Linux
    let at = |n: usize| f.get(n - 3).copied().unwrap_or(0.0) / tick;
    (at(14) + at(15), at(16) + at(17))
}

fn num_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn pid_of(name: &str) -> String {
    let out = Command::new("pidof")
        .arg(name)
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_string()
}

/// CPU seconds spent so far by each party to a transcript: the worker, the engine's two
/// daemons, this process (the embedded control plane) and its reaped children (docker CLIs).
#[derive(Clone, Copy, Default)]
struct Cpu {
    worker: f64,
    dockerd: f64,
    containerd: f64,
    control_plane: f64,
    docker_cli: f64,
}

impl Cpu {
    fn now(worker: u32) -> Cpu {
        let (own, children) = proc_cpu("self");
        Cpu {
            worker: proc_cpu(&worker.to_string()).0,
            dockerd: proc_cpu(&pid_of("dockerd")).0,
            containerd: proc_cpu(&pid_of("containerd")).0,
            control_plane: own,
            docker_cli: children,
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            worker: self.worker - before.worker,
            dockerd: self.dockerd - before.dockerd,
            containerd: self.containerd - before.containerd,
            control_plane: self.control_plane - before.control_plane,
            docker_cli: self.docker_cli - before.docker_cli,
        }
    }

    fn add(&mut self, o: Cpu) {
        self.worker += o.worker;
        self.dockerd += o.dockerd;
        self.containerd += o.containerd;
        self.control_plane += o.control_plane;
        self.docker_cli += o.docker_cli;
    }
}

/// Median of the samples (the middle one; rounds are few and odd by default).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn worker(cp: &ControlPlane, state: &std::path::Path) -> Child {
    Command::new(BIN)
        .args([
            "run",
            "--worker-id",
            &format!("bench-tr-{}", std::process::id()),
            "--control-plane-url",
            &cp.ws_url(),
            "--state-dir",
            state.to_str().unwrap(),
            "--max-concurrent-tasks",
            "4",
            "--log-level",
            "warn",
            "--shutdown-mode",
            "cancel",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .env("BERTH_API_KEY", BENCH_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn until(cond: impl Fn() -> bool, limit: Duration) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "benchmark step timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn submit(cp: &ControlPlane, bytes: u64) -> String {
    cp.submit(SubmitRequest {
        image: Some(IMAGE.into()),
        command: vec!["sh".into(), "-c".into(), script(bytes)],
        ..SubmitRequest::default()
    })
    .id
}

/// `docker run --rm IMAGE sh -c SCRIPT > /dev/null`, attached (the CLI streams the output).
fn docker_run_attached(bytes: u64) -> std::process::Child {
    Command::new("docker")
        .args([
            "run",
            "--rm",
            "--label",
            "berth.bench=transcript",
            IMAGE,
            "sh",
            "-c",
            &script(bytes),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Seconds for the engine to deliver the output through each of its two paths, read through
/// bollard as berth would: (attach stream while the container runs, timestamped log read-back
/// of the same container afterwards).
async fn engine_paths(bytes: u64) -> (f64, f64, u64, u64) {
    use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
    use bollard::query_parameters::{AttachContainerOptionsBuilder, LogsOptionsBuilder};
    use futures_util::StreamExt;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(vec!["sh".into(), "-c".into(), script(bytes)]),
        labels: Some([("berth.bench".to_string(), "transcript".to_string())].into()),
        host_config: Some(HostConfig {
            log_config: Some(HostConfigLogConfig {
                typ: Some("local".into()),
                config: Some([("max-size".to_string(), "1g".to_string())].into()),
            }),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let id = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await
        .unwrap()
        .id;
    let opts = AttachContainerOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .stream(true)
        .build();
    let mut attached = docker.attach_container(&id, Some(opts)).await.unwrap();
    let t = Instant::now();
    docker
        .start_container(
            &id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = attached.output.next().await {
        seen += chunk.into_bytes().len() as u64;
    }
    let attach_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let opts = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .build();
    let mut logs = docker.logs(&id, Some(opts));
    let mut read = 0u64;
    while let Some(Ok(entry)) = logs.next().await {
        read += entry.into_bytes().len() as u64;
    }
    let logs_secs = t.elapsed().as_secs_f64();
    let rm = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
        .force(true)
        .build();
    let _ = docker.remove_container(&id, Some(rm)).await;
    (attach_secs, logs_secs, seen, read)
}

fn main() {
    berth::control::tls::install_default_provider();
    let mb: u64 = std::env::var("BERTH_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let bytes = mb * 1_000_000;
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    rt.block_on(async {
        import_image().await;
        let cp = control_plane().await;
        let mut w = worker(&cp, state.path());
        let pid = w.id();
        until(|| !cp.workers().is_empty(), Duration::from_secs(30)).await;
        let idle_rss = rss_kib(pid, "VmRSS:");

        // 1 and 2, alternated over rounds (median reported): one task end to end (submit ->
        // whole transcript stored by the control plane), and the same output through Docker
        // alone, attached, as `docker run` users see it. Alternating keeps a noisy neighbour
        // from favouring one side.
        let mut berth_runs = Vec::new();
        let mut attached_runs = Vec::new();
        let mut stored = 0;
        for _ in 0..rounds {
            let t0 = Instant::now();
            let id = submit(&cp, bytes);
            until(|| cp.task(&id).is_some_and(|t| t.complete()), Duration::from_secs(900)).await;
            berth_runs.push(t0.elapsed().as_secs_f64());
            stored = cp.task(&id).unwrap().transcript_bytes;
            let ta = Instant::now();
            assert!(docker_run_attached(bytes).wait().unwrap().success());
            attached_runs.push(ta.elapsed().as_secs_f64());
        }
        let berth_secs = median(&mut berth_runs);
        let attached_secs = median(&mut attached_runs);
        let (attach_secs, engine_logs_secs, attach_bytes, log_bytes) = engine_paths(bytes).await;

        // 3. Run detached, then read it back with docker logs.
        let t1 = Instant::now();
        let out = Command::new("docker")
            .args(["run", "-d", "--log-driver", "local", "--log-opt", "max-size=1g", IMAGE, "sh", "-c", &script(bytes)])
            .output()
            .unwrap();
        let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Command::new("docker").args(["wait", &cid]).output().unwrap();
        let produce_secs = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let logs = Command::new("sh")
            .args(["-c", &format!("docker logs {cid} > /dev/null 2>&1")])
            .status()
            .unwrap();
        assert!(logs.success());
        let logs_secs = t2.elapsed().as_secs_f64();
        Command::new("docker").args(["rm", "-f", &cid]).output().unwrap();

        // 4. Four attached docker runs at once, then four such tasks through berth (with the
        // worker's peak RSS), alternated over rounds.
        let mut four_docker_runs = Vec::new();
        let mut four_runs = Vec::new();
        let mut peak = 0;
        let mut cpu_docker = Cpu::default();
        let mut cpu_berth = Cpu::default();
        for _ in 0..rounds {
            let c0 = Cpu::now(pid);
            let t4 = Instant::now();
            let runs: Vec<Child> = (0..4).map(|_| docker_run_attached(bytes)).collect();
            for mut r in runs {
                assert!(r.wait().unwrap().success());
            }
            four_docker_runs.push(t4.elapsed().as_secs_f64());
            let c1 = Cpu::now(pid);
            cpu_docker.add(c1.since(c0));
            let ids: Vec<String> = (0..4).map(|_| submit(&cp, bytes)).collect();
            let t3 = Instant::now();
            while !ids.iter().all(|i| cp.task(i).is_some_and(|t| t.complete())) {
                peak = peak.max(rss_kib(pid, "VmRSS:"));
                assert!(t3.elapsed() < Duration::from_secs(1800));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            four_runs.push(t3.elapsed().as_secs_f64());
            cpu_berth.add(Cpu::now(pid).since(c1));
        }
        let four_docker_secs = median(&mut four_docker_runs);
        let four_secs = median(&mut four_runs);
        let hwm = rss_kib(pid, "VmHWM:");

        let mbps = |secs: f64| bytes as f64 / 1e6 / secs;
        let mut r = Report::default();
        r.line(format!("berth transcript throughput ({mb} MB of ~80-byte lines, image {IMAGE}; median of {rounds} alternated rounds where marked *)"));
        r.line(format!("{:<58} {:>10} {:>10}", "measure", "seconds", "MB/s"));
        r.line(format!("{:<58} {:>10.2} {:>10.1}", "* berth: submit -> whole transcript stored by control plane", berth_secs, mbps(berth_secs)));
        r.line(format!("{:<58} {:>10.2} {:>10.1}", "* docker run IMAGE CMD > /dev/null (attached)", attached_secs, mbps(attached_secs)));
        r.line(format!("{:<58} {:>10.2} {:>10.1}", "engine attach stream via bollard (start -> last byte)", attach_secs, attach_bytes as f64 / 1e6 / attach_secs));
        r.line(format!("{:<58} {:>10.2} {:>10.1}", "engine log read-back via bollard, timestamped (fallback)", engine_logs_secs, log_bytes as f64 / 1e6 / engine_logs_secs));
        r.line(format!("{:<58} {:>10.2} {:>10.1}", "docker: run -d ... until exit (output into the log)", produce_secs, mbps(produce_secs)));
        r.line(format!("{:<58} {:>10.2} {:>10.1}", "docker logs CONTAINER > /dev/null (read back)", logs_secs, mbps(logs_secs)));
        r.line(format!("{:<58} {:>10.2} {:>10.1}", "docker total: produce + read back", produce_secs + logs_secs, mbps(produce_secs + logs_secs)));
        r.line(format!(
            "ratio berth / attached docker run: {:.2}x (target >= 0.9x)   berth / docker logs read back: {:.2}x   berth / docker produce + read back: {:.2}x",
            mbps(berth_secs) / mbps(attached_secs),
            mbps(berth_secs) / mbps(logs_secs),
            mbps(berth_secs) / mbps(produce_secs + logs_secs)
        ));
        r.line(format!("transcript bytes stored: {stored}"));
        r.line("");
        r.line("worker process memory");
        r.line(format!("  idle RSS:                           {:>8.1} MiB", idle_rss as f64 / 1024.0));
        r.line(format!("  peak RSS, 4 x {mb} MB tasks at once: {:>8.1} MiB (VmHWM over the whole run {:.1} MiB; target <= 64 MiB)", peak as f64 / 1024.0, hwm as f64 / 1024.0));
        r.line(format!("  samples (s): berth 1 task {berth_runs:.2?}, docker 1 run {attached_runs:.2?}, berth 4 tasks {four_runs:.1?}, docker 4 runs {four_docker_runs:.1?}"));
        r.line(format!("  * 4 tasks finished in {four_secs:.1} s ({:.1} MB/s aggregate)", 4.0 * bytes as f64 / 1e6 / four_secs));
        r.line(format!(
            "  * 4 attached docker runs finished in {four_docker_secs:.1} s ({:.1} MB/s aggregate); ratio berth / docker: {:.2}x (target >= 0.9x)",
            4.0 * bytes as f64 / 1e6 / four_docker_secs,
            four_docker_secs / four_secs
        ));
        // Where the CPU went (2 cores shared by all of them): per GB of transcript.
        let gb = rounds as f64 * 4.0 * bytes as f64 / 1e9;
        r.line("");
        r.line(format!("CPU seconds per GB of transcript, 4 at once ({:.0} cores x wall: docker {:.1} s, berth {:.1} s per GB)",
            num_cpus(), num_cpus() * four_docker_secs * 1e9 / (4.0 * bytes as f64), num_cpus() * four_secs * 1e9 / (4.0 * bytes as f64)));
        r.line(format!("{:<34} {:>10} {:>10} {:>10} {:>14} {:>8}", "path", "dockerd", "containerd", "worker", "control plane", "client"));
        let row = |name: &str, c: Cpu| format!("{:<34} {:>10.2} {:>10.2} {:>10.2} {:>14.2} {:>8.2}", name, c.dockerd / gb, c.containerd / gb, c.worker / gb, c.control_plane / gb, c.docker_cli / gb);
        r.line(row("4 attached docker runs", cpu_docker));
        r.line(row("4 berth tasks", cpu_berth));
        r.publish("transcript", "cargo bench --bench transcript");
        let _ = w.kill();
        let _ = w.wait();
        // Only this benchmark's own containers: the engine is shared.
        let mine = format!(
            "docker ps -aq --filter label=berth.worker_id=bench-tr-{} | xargs -r docker rm -f >/dev/null; docker ps -aq --filter label=berth.bench=transcript | xargs -r docker rm -f >/dev/null",
            std::process::id()
        );
        let _ = Command::new("sh").args(["-c", &mine]).status();
        cp.shutdown();
    });
    let _ = Command::new("docker").args(["rmi", "-f", IMAGE]).output();
}
