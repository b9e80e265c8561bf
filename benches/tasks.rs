//! Task overhead benchmark: berth (embedded control plane + worker over a loopback WebSocket,
//! real Docker) against raw `docker run --rm` measured in the same run, on a local image.
//!
//!   cargo bench --bench tasks            # defaults: 15 single runs, 100 tasks at concurrency 8
//!   BERTH_BENCH_SINGLE=30 BERTH_BENCH_BATCH=200 cargo bench --bench tasks
//!
//! Prints figures and ratios; it never fails on a time (shared machines are noisy).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{BENCH_KEY, IMAGE, Report, control_plane, env_usize, import_image};

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::config::{self, Overrides};
use berth::devserver::ControlPlane;
use berth::devserver::state::{SubmitRequest, TaskState};
use berth::secret::Secret;
use berth::worker::Worker;
use tokio_util::sync::CancellationToken;

fn docker_run_once() -> Duration {
    let t = Instant::now();
    let ok = Command::new("docker")
        .args(["run", "--rm", IMAGE, "true"])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "docker run failed");
    t.elapsed()
}

fn docker_xargs(n: usize, conc: usize) -> Duration {
    let t = Instant::now();
    let mut child = Command::new("xargs")
        .args([
            "-P",
            &conc.to_string(),
            "-I{}",
            "docker",
            "run",
            "--rm",
            IMAGE,
            "true",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let input: String = (0..n).map(|i| format!("{i}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "xargs docker run failed");
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn berth_single(cp: &ControlPlane) -> Duration {
    let t = Instant::now();
    let rec = cp.submit(SubmitRequest {
        image: Some(IMAGE.into()),
        command: vec!["true".into()],
        ..SubmitRequest::default()
    });
    let done = cp.wait(&rec.id, Duration::from_secs(120)).await.unwrap();
    let el = t.elapsed();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    el
}

async fn berth_batch(cp: &ControlPlane, n: usize) -> Duration {
    let t = Instant::now();
    let ids: Vec<String> = (0..n)
        .map(|_| {
            cp.submit(SubmitRequest {
                image: Some(IMAGE.into()),
                command: vec!["true".into()],
                ..SubmitRequest::default()
            })
            .id
        })
        .collect();
    for id in &ids {
        let done = cp.wait(id, Duration::from_secs(600)).await.unwrap();
        assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    }
    t.elapsed()
}

fn main() {
    berth::control::tls::install_default_provider();
    let single_n = env_usize("BERTH_BENCH_SINGLE", 15);
    let batch_n = env_usize("BERTH_BENCH_BATCH", 100);
    let conc = 8;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        import_image().await;
        let cp = control_plane().await;
        let ov = Overrides {
            worker_id: Some(format!("bench-{}", std::process::id())),
            api_key: Some(Secret::new(BENCH_KEY)),
            control_plane_url: Some(cp.ws_url()),
            max_concurrent_tasks: Some(conc as u32),
            state_dir: Some(std::env::temp_dir().join("berth-bench")),
            log_level: Some("warn".into()),
            api_listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let cfg = config::load_str(None, None, &ov, &|_| None).unwrap();
        let worker = Worker::prepare(cfg, None).await.unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let w = tokio::spawn(async move { worker.run(token, |_| {}).await });
        while cp.workers().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Warm-up both paths once.
        berth_single(&cp).await;
        docker_run_once();

        // Interleave so drift on a shared machine hits both sides alike.
        let mut b = Vec::new();
        let mut d = Vec::new();
        for _ in 0..single_n {
            b.push(berth_single(&cp).await);
            d.push(tokio::task::spawn_blocking(docker_run_once).await.unwrap());
        }
        let (bm, dm) = (median(b), median(d));

        let bb = berth_batch(&cp, batch_n).await;
        let db = tokio::task::spawn_blocking(move || docker_xargs(batch_n, conc))
            .await
            .unwrap();

        let mut r = Report::default();
        r.line(format!(
            "berth task overhead vs raw docker run (image {IMAGE}, command `true`)"
        ));
        r.line(format!(
            "{:<44} {:>12} {:>12} {:>8}",
            "measure", "berth", "docker run", "ratio"
        ));
        r.line(format!(
            "{:<44} {:>10.1}ms {:>10.1}ms {:>8.3}",
            format!("submit -> terminal, median of {single_n}"),
            ms(bm),
            ms(dm),
            ms(bm) / ms(dm)
        ));
        r.line(format!(
            "{:<44} {:>11.2}s {:>11.2}s {:>8.3}",
            format!("{batch_n} tasks at concurrency {conc} (wall)"),
            bb.as_secs_f64(),
            db.as_secs_f64(),
            bb.as_secs_f64() / db.as_secs_f64()
        ));
        r.line(format!(
            "{:<44} {:>8.1}/s   {:>8.1}/s",
            "throughput",
            batch_n as f64 / bb.as_secs_f64(),
            batch_n as f64 / db.as_secs_f64()
        ));
        r.line("(ratio < 1.0 means berth was faster; target: within 1.10)");
        r.publish("tasks", "cargo bench --bench tasks");
        stop.cancel();
        let _ = w.await;
        cp.shutdown();
    });
    let _ = Command::new("docker").args(["rmi", "-f", IMAGE]).output();
}
