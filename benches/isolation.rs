//! Isolation costs, measured side by side in one run on a local image:
//! * start-up under gVisor (`runsc`) vs the engine default (`runc`): raw `docker run` both
//!   ways, and berth submit → result both ways (an environment asking for `runsc`);
//! * egress through berth's proxy (allowlist) vs straight to the same server (a busybox httpd
//!   in a container of the benchmark's own): download throughput of one file.
//!
//!   cargo bench --bench isolation        # BERTH_BENCH_RUNS=10 BERTH_BENCH_MB=200
//!
//! Needs runsc registered with dockerd (as .ci/run does). Prints figures and ratios; it never
//! fails on a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{BENCH_KEY, IMAGE, Report, control_plane, env_usize, import_image};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::config::{self, Overrides};
use berth::devserver::ControlPlane;
use berth::devserver::state::{SubmitRequest, TaskState};
use berth::secret::Secret;
use berth::worker::Worker;
use tokio_util::sync::CancellationToken;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker_run_ms(runtime: &str) -> f64 {
    let t = Instant::now();
    let ok = Command::new("docker")
        .args(["run", "--rm", "--runtime", runtime, IMAGE, "true"])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "docker run --runtime {runtime} failed");
    t.elapsed().as_secs_f64() * 1000.0
}

async fn berth_ms(
    cp: &ControlPlane,
    environment: Option<serde_json::Value>,
    cmd: &str,
) -> (f64, String) {
    let t = Instant::now();
    let rec = cp.submit(SubmitRequest {
        image: Some(IMAGE.into()),
        command: vec!["sh".into(), "-c".into(), cmd.into()],
        environment,
        ..SubmitRequest::default()
    });
    let done = cp.wait(&rec.id, Duration::from_secs(300)).await.unwrap();
    let el = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    for _ in 0..100 {
        if cp.task(&rec.id).is_some_and(|t| t.complete()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = String::from_utf8_lossy(&cp.transcript(&rec.id).unwrap_or_default()).into_owned();
    (el, text)
}

/// Seconds from busybox `time`'s `real\t0m 1.23s` line.
fn real_secs(text: &str) -> f64 {
    let l = text
        .lines()
        .find(|l| l.starts_with("real"))
        .unwrap_or_else(|| panic!("no time output in:\n{text}"));
    let v = l.trim_start_matches("real").trim();
    let (m, s) = v.split_once('m').unwrap();
    m.trim().parse::<f64>().unwrap() * 60.0 + s.trim().trim_end_matches('s').parse::<f64>().unwrap()
}

/// Removes what the benchmark made, also when it panics.
struct Cleanup {
    server: String,
    net: String,
    worker_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let run = |tool: &str, args: &[&str]| {
            let _ = Command::new(tool).args(args).output();
        };
        run("docker", &["rm", "-f", &self.server]);
        let ours = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=berth.worker_id={}", self.worker_id),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for c in ours.split_whitespace() {
            run("docker", &["rm", "-f", c]);
        }
        // berth removes its sealed network when it stops; one left by a failed run goes here.
        let sealed = Command::new("docker")
            .args(["network", "ls", "--format", "{{.Name}}", "--filter"])
            .arg(format!("label=berth.worker_id={}", self.worker_id))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for net in sealed.split_whitespace() {
            let bridge = Command::new("docker")
                .args(["network", "inspect", "-f"])
                .arg("{{index .Options \"com.docker.network.bridge.name\"}}")
                .arg(net)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            run("docker", &["network", "rm", net]);
            berth::egress::firewall::unseal(&bridge);
        }
        run("docker", &["network", "rm", &self.net]);
        // Also after a panic: a left-behind image would be re-tagged (and its old copy left
        // dangling) by the next run.
        run("docker", &["rmi", "-f", IMAGE]);
    }
}

fn main() {
    berth::control::tls::install_default_provider();
    let runs = env_usize("BERTH_BENCH_RUNS", 10);
    let mb = env_usize("BERTH_BENCH_MB", 200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let net = format!("berth-bench-net-{}", std::process::id());
    rt.block_on(async {
        import_image().await;
        docker(&["network", "create", "--label", "berth.test=true", &net]);
        let server = docker(&[
            "run", "-d", "--label", "berth.test=true", "--network", &net, IMAGE, "sh", "-c",
            &format!("mkdir -p /www && head -c {}000000 /dev/zero > /www/big && exec httpd -f -p 8080 -h /www", mb),
        ]);
        let _cleanup = Cleanup {
            server: server.clone(),
            net: net.clone(),
            worker_id: format!("bench-iso-{}", std::process::id()),
        };
        let ip = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &server]);
        let cp = control_plane().await;
        let worker_id = format!("bench-iso-{}", std::process::id());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let yaml = format!(
            "worker_id: {worker_id}\nadmission:\n  min_free_disk: 0\nbackend:\n  docker:\n    pull_policy: never\n    policy:\n      security:\n        network: {net}\n        allowed_runtimes: [runsc]\n      egress:\n        proxy_port: {port}\n"
        );
        let ov = Overrides {
            api_key: Some(Secret::new(BENCH_KEY)),
            control_plane_url: Some(cp.ws_url()),
            state_dir: Some(std::env::temp_dir().join("berth-bench-isolation")),
            log_level: Some("warn".into()),
            api_listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let cfg = config::load_str(Some(&yaml), None, &ov, &|_| None).unwrap();
        let worker = Worker::prepare(cfg, None).await.unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let w = tokio::spawn(async move { worker.run(token, |_| {}).await });
        while cp.workers().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gvisor = Some(serde_json::json!({"runtime": "runsc"}));
        // Warm-up every path once.
        docker_run_ms("runc");
        docker_run_ms("runsc");
        berth_ms(&cp, None, "true").await;
        berth_ms(&cp, gvisor.clone(), "true").await;
        let (mut dr, mut dg, mut br, mut bg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            dr.push(tokio::task::spawn_blocking(|| docker_run_ms("runc")).await.unwrap());
            dg.push(tokio::task::spawn_blocking(|| docker_run_ms("runsc")).await.unwrap());
            br.push(berth_ms(&cp, None, "true").await.0);
            bg.push(berth_ms(&cp, gvisor.clone(), "true").await.0);
        }
        let (dr, dg, br, bg) = (median(dr), median(dg), median(br), median(bg));

        // Throughput: the same file from the same server, straight and through the proxy.
        let fetch = |via_proxy: bool| {
            // The proxy's host and port are expanded by the outer shell.
            let (prefix, target) = if via_proxy {
                (
                    "p=${http_proxy#http://}; h=${p%:*}; port=${p##*:}; ".to_string(),
                    format!("printf 'GET http://{ip}:8080/big HTTP/1.0\\r\\n\\r\\n' | nc $h $port"),
                )
            } else {
                (
                    String::new(),
                    format!("printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc {ip} 8080"),
                )
            };
            format!("{prefix}time sh -c \"{target} | wc -c\"")
        };
        let allow = Some(serde_json::json!({"egress": {"mode": "allowlist", "allow": [format!("{ip}:8080")]}}));
        let (mut direct, mut proxied) = (Vec::new(), Vec::new());
        for _ in 0..3.max(runs / 3) {
            let (_, t) = berth_ms(&cp, None, &fetch(false)).await;
            direct.push(real_secs(&t));
            let (_, t) = berth_ms(&cp, allow.clone(), &fetch(true)).await;
            let got: u64 = t
                .lines()
                .find_map(|l| l.trim().parse().ok())
                .unwrap_or(0);
            assert!(got >= mb as u64 * 1_000_000, "the proxied download is incomplete:\n{t}");
            proxied.push(real_secs(&t));
        }
        let (direct, proxied) = (median(direct), median(proxied));
        let mbps = |s: f64| mb as f64 / s.max(0.01);

        let mut r = Report::default();
        r.line(format!("isolation costs (image {IMAGE}, {runs} runs each, medians)"));
        r.line(format!("{:<46} {:>12} {:>12} {:>8}", "measure", "runsc", "runc", "ratio"));
        r.line(format!("{:<46} {:>10.1}ms {:>10.1}ms {:>8.2}", "docker run --rm IMAGE true", dg, dr, dg / dr));
        r.line(format!("{:<46} {:>10.1}ms {:>10.1}ms {:>8.2}", "berth submit -> result (`true`)", bg, br, bg / br));
        r.line(format!("{:<46} {:>12} {:>12} {:>8}", "", "via proxy", "direct", "ratio"));
        r.line(format!(
            "{:<46} {:>8.0}MB/s {:>8.0}MB/s {:>8.2}",
            format!("download {mb} MB from a container, in a task"),
            mbps(proxied),
            mbps(direct),
            mbps(proxied) / mbps(direct)
        ));
        r.line("(runsc/runc > 1 is gVisor's start-up cost; via-proxy/direct < 1 is the proxy's cost)");
        r.publish("isolation", "cargo bench --bench isolation");
        stop.cancel();
        let _ = w.await;
        cp.shutdown();
    });
    let _ = Command::new("docker").args(["rmi", "-f", IMAGE]).output();
}
