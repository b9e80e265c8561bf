//! Isolation of untrusted task code on real Docker: OCI runtimes (gVisor's `runsc`, which CI
//! installs and registers with the engine) chosen by policy and checked at start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use berth::devserver::state::{SubmitRequest, TaskState};
use berth::protocol::InstanceShape;
use support::*;

fn inspect(container: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn script(s: &str) -> SubmitRequest {
    SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["sh".into(), "-c".into(), s.into()],
        ..SubmitRequest::default()
    }
}

fn runsc_policy(extra: &str) -> String {
    format!("    policy:\n      security:\n        runtime: runsc\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_the_engine_does_not_have_stops_berth_at_start_up() {
    let _images = Images::acquire();
    let id = worker_id("no-runtime");
    for docker_yaml in [
        "    policy:\n      security:\n        runtime: berth-no-such-runtime\n",
        "    policy:\n      security:\n        allowed_runtimes: [berth-no-such-runtime]\n",
    ] {
        let opts = EnvOptions {
            docker_yaml: docker_yaml.into(),
            ..EnvOptions::default()
        };
        let cfg = worker_config("ws://127.0.0.1:9/", &id, "k", &opts);
        let err = match berth::worker::Worker::prepare(cfg, None).await {
            Ok(_) => panic!("berth started with an unregistered runtime ({docker_yaml})"),
            Err(e) => e.to_string(),
        };
        for needle in ["berth-no-such-runtime", "runc", "daemon.json", "never"] {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("berth-test-{id}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_under_gvisor_with_their_transcript_limits_and_cancellation() {
    let env = Env::start(
        "gvisor",
        EnvOptions {
            docker_yaml: runsc_policy(""),
            ..EnvOptions::default()
        },
    )
    .await;
    // gVisor's kernel: its own version string and boot messages, not the host's.
    let (done, text) = env
        .run(SubmitRequest {
            instance_shape: Some(InstanceShape {
                vcpus: Some(1),
                memory_gb: Some(1),
            }),
            ..script("echo kernel=$(uname -r); dmesg | head -n 1; echo out; echo err >&2; exit 3")
        })
        .await;
    assert_eq!(done.state, TaskState::Failed, "{done:?}\n{text}");
    assert_eq!(
        done.exit_code,
        Some(3),
        "the exit code survives the runtime"
    );
    assert!(
        text.contains("kernel=4.4.0\n"),
        "not gVisor's kernel:\n{text}"
    );
    assert!(
        text.contains("Starting gVisor"),
        "no gVisor boot line:\n{text}"
    );
    assert!(text.contains("out\n") && text.contains("err\n"), "{text}");

    // The runtime and the limits are the engine's, checked on the live container.
    let t = env.cp.submit(SubmitRequest {
        instance_shape: Some(InstanceShape {
            vcpus: Some(1),
            memory_gb: Some(1),
        }),
        ..script("echo started; sleep 60")
    });
    until("running", || {
        env.cp
            .transcript(&t.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("started"))
    })
    .await;
    let c = containers_of_task(&t.id);
    assert_eq!(c.len(), 1);
    assert_eq!(inspect(&c[0], "{{.HostConfig.Runtime}}"), "runsc");
    assert_eq!(inspect(&c[0], "{{.HostConfig.PidsLimit}}"), "4096");
    assert_eq!(inspect(&c[0], "{{.HostConfig.Memory}}"), "1073741824");
    assert_eq!(inspect(&c[0], "{{.HostConfig.NanoCpus}}"), "1000000000");
    env.cp.cancel(&t.id).unwrap();
    let cancelled = env.finished(&t.id).await;
    assert_eq!(cancelled.state, TaskState::Cancelled, "{cancelled:?}");
    until("closed", || {
        env.cp.task(&t.id).is_some_and(|t| t.closed == 1)
    })
    .await;
    assert!(containers_of_task(&t.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_may_ask_for_a_runtime_only_the_policy_allows() {
    let env = Env::start(
        "env-runtime",
        EnvOptions {
            docker_yaml: "    policy:\n      security:\n        allowed_runtimes: [runsc]\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let with = |runtime: &str| SubmitRequest {
        environment: Some(serde_json::json!({"runtime": runtime})),
        ..script("echo kernel=$(uname -r)")
    };
    let (done, text) = env.run(with("runsc")).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    assert!(text.contains("kernel=4.4.0\n"), "{text}");
    // Without the environment's ask, the engine default (runc: the host's kernel).
    let (plain, text) = env.run(script("echo kernel=$(uname -r)")).await;
    assert_eq!(plain.state, TaskState::Succeeded);
    assert!(!text.contains("kernel=4.4.0\n"), "{text}");
    // An environment never widens policy: a runtime it does not allow fails before anything
    // is created, naming the runtime and the key to change.
    let (refused, _) = env.run(with("kata-runtime")).await;
    assert_eq!(refused.state, TaskState::Failed);
    assert_eq!(refused.failure_reason.as_deref(), Some("container_create"));
    let msg = refused.message.clone().unwrap_or_default();
    assert!(
        msg.contains("kata-runtime") && msg.contains("allowed_runtimes"),
        "{msg}"
    );
    assert!(containers_of_task(&refused.id).is_empty());
}

/// A busybox HTTP server in its own container on a network of the test's own, answering
/// `body`; removed (with the network) on drop.
struct Server {
    id: String,
    ip: String,
}

struct TestNet {
    name: String,
    servers: Vec<Server>,
}

impl TestNet {
    fn start(tag: &str, bodies: &[&str]) -> TestNet {
        let name = format!("berth-test-net-{tag}-{}", std::process::id());
        let out = Command::new("docker")
            .args(["network", "create", "--label", "berth.test=true", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut net = TestNet {
            name,
            servers: Vec::new(),
        };
        for body in bodies {
            let out = Command::new("docker")
                .args([
                    "run", "-d", "--label", "berth.test=true", "--network", &net.name, BUSYBOX, "sh",
                    "-c",
                ])
                .arg(format!(
                    "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www"
                ))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let ip = inspect(
                &id,
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            );
            net.servers.push(Server { id, ip });
        }
        net
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for s in &self.servers {
            let _ = Command::new("docker").args(["rm", "-f", &s.id]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// An HTTP GET through the task's `http_proxy` (busybox's static wget cannot resolve here, so
/// the scripts speak HTTP through nc).
const VIA_PROXY: &str = r#"via() { p=${http_proxy#http://}; printf "GET http://$1/ HTTP/1.0\r\n\r\n" | nc -w 5 ${p%:*} ${p##*:}; }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_egress_allowlist_is_enforced_at_the_network_layer_and_summarised() {
    let _images = Images::acquire();
    let net = TestNet::start("egress", &["allowed-server", "other-server"]);
    let (allowed, other) = (&net.servers[0].ip, &net.servers[1].ip);
    // Something listening on every host address: a task must not reach it around the proxy.
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        for mut c in host_service.incoming().flatten() {
            let _ = c.write_all(b"host-service\n");
        }
    });
    let (env, _sealed) = allowlisted("egress", &format!("{allowed}:8080")).await;
    let script = format!(
        r#"{VIA_PROXY}
echo "allowed: $(via {allowed}:8080 | tail -n 1)"
echo "denied: $(via {other}:8080 | head -n 1)"
echo "tunnel: $(printf 'CONNECT {allowed}:8080 HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n' | nc -w 5 ${{p%:*}} ${{p##*:}} | tail -n 1)"
echo "direct: $(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 {allowed} 8080 || echo unreachable)"
gw=${{p%:*}}
echo "host: $(echo hi | nc -w 3 $gw {host_port} && echo reached || echo unreachable)"
echo "loopback-via-proxy: $(via 127.0.0.1:{host_port} | head -n 1)"
echo "vars: $http_proxy $HTTPS_PROXY"
"#
    );
    let script = script.replace("echo \"tunnel", "p=${http_proxy#http://}\necho \"tunnel");
    let (done, text) = env.run(self::script(&script)).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{text}");
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
            .to_string()
    };
    assert_eq!(line("allowed: "), "allowed: allowed-server", "{text}");
    assert!(line("denied: ").contains("403"), "{text}");
    assert_eq!(line("tunnel: "), "tunnel: allowed-server", "{text}");
    assert_eq!(
        line("direct: "),
        "direct: unreachable",
        "a task ignoring the proxy got out:\n{text}"
    );
    assert_eq!(
        line("host: "),
        "host: unreachable",
        "a task reached a host service:\n{text}"
    );
    assert!(line("loopback-via-proxy: ").contains("403"), "{text}");
    assert!(line("vars: ").contains(":"), "{text}");
    let summary = line("[berth] egress: ");
    assert!(
        summary.contains("2 connections allowed")
            && summary.contains(&format!("{other}:8080 ×1"))
            && summary.contains(&format!("127.0.0.1:{host_port} ×1")),
        "{summary}\n{text}"
    );
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("berth_egress_connections_total{decision=\"allowed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_egress_connections_total{decision=\"denied\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_none_means_no_network_and_an_environment_only_narrows() {
    let _images = Images::acquire();
    let net = TestNet::start("narrow", &["first-server", "second-server"]);
    let (a, b) = (&net.servers[0].ip, &net.servers[1].ip);
    let (env, _sealed) = allowlisted("egress-narrow", &format!("{a}:8080")).await;
    let probe = format!(
        "{VIA_PROXY}\necho \"a: $(via {a}:8080 | tail -n 1)\"\necho \"b: $(via {b}:8080 | head -n 1)\"\necho \"ifaces: $(ls /sys/class/net | tr '\\n' ' ')\""
    );
    // An environment listing b cannot add it; it can take a away.
    let (done, text) = env
        .run(SubmitRequest {
            environment: Some(serde_json::json!({"egress": {"allow": [format!("{b}:8080")]}})),
            ..script(&probe)
        })
        .await;
    assert_eq!(done.state, TaskState::Succeeded, "{text}");
    assert!(
        text.contains("a: HTTP/1.1 403") || text.contains("a: berth egress policy"),
        "{text}"
    );
    assert!(text.contains("b: HTTP/1.1 403"), "{text}");
    // mode none: no network interface but loopback.
    let (done, text) = env
        .run(SubmitRequest {
            environment: Some(serde_json::json!({"egress": {"mode": "none"}})),
            ..script("echo \"ifaces: $(ls /sys/class/net | tr '\\n' ' ')\"")
        })
        .await;
    assert_eq!(done.state, TaskState::Succeeded, "{text}");
    assert!(text.contains("ifaces: lo \n"), "{text}");
    // An environment asking for open gets the policy's allowlist all the same.
    let (_, text) = env
        .run(SubmitRequest {
            environment: Some(serde_json::json!({"egress": {"mode": "open"}})),
            ..script(&probe)
        })
        .await;
    assert!(text.contains("a: first-server"), "{text}");
    assert!(text.contains("b: HTTP/1.1 403"), "{text}");
}

/// A worker whose policy allows only `entry`, and the cleanup of its sealed network.
async fn allowlisted(name: &str, entry: &str) -> (Env, SealedCleanup) {
    let env = Env::start(
        name,
        EnvOptions {
            docker_yaml: format!(
                "    policy:\n      egress:\n        mode: allowlist\n        allow: ['{entry}']\n        proxy_port: {}\n",
                free_port()
            ),
            ..EnvOptions::default()
        },
    )
    .await;
    let sealed = SealedCleanup(env.worker_id.clone());
    (env, sealed)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_tasks_report_their_usage_too() {
    // Ten tasks of ~0.3 s each, one after another: each result carries what it used.
    let env = Env::start("usage-short", EnvOptions::default()).await;
    for i in 0..10 {
        let (done, text) = env
            .run(script(
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo counted",
            ))
            .await;
        assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
        let u = done
            .usage
            .unwrap_or_else(|| panic!("task {i} reported no usage: {done:?}\n{text}"));
        assert!(u.cpu_ms > 0 && u.peak_memory_bytes > 0, "task {i}: {u:?}");
        assert!(
            text.lines()
                .last()
                .unwrap_or_default()
                .starts_with("[berth] usage: cpu "),
            "task {i}:\n{text}"
        );
        let ran = done
            .finished_at
            .zip(done.claimed_at)
            .map(|(f, c)| (f - c).num_milliseconds())
            .unwrap_or_default();
        eprintln!(
            "task {i}: {ran} ms claimed to finished, cpu {} ms, peak memory {} bytes, {} samples",
            u.cpu_ms, u.peak_memory_bytes, u.samples
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_reports_what_it_used() {
    let _images = Images::acquire();
    let net = TestNet::start("usage", &["big"]);
    // Tasks join the test's own network, where its server is.
    let env = Env::start(
        "usage",
        EnvOptions {
            docker_yaml: format!(
                "    policy:\n      security:\n        network: {}\n",
                net.name
            ),
            ..EnvOptions::default()
        },
    )
    .await;
    // The server's file is 4 MB; the task fetches it, burns CPU, holds ~30 MB, then waits so
    // it is seen running.
    let out = Command::new("docker")
        .args([
            "exec",
            &net.servers[0].id,
            "sh",
            "-c",
            "head -c 4000000 /dev/zero > /www/big",
        ])
        .status()
        .unwrap();
    assert!(out.success());
    let ip = &net.servers[0].ip;
    let t = env.cp.submit(script(&format!(
        "printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc {ip} 8080 > /dev/null; \
         i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; \
         x=$(head -c 30000000 /dev/zero | tr '\\0' a); echo held ${{#x}}; sleep 5"
    )));
    until("holding memory", || {
        env.cp
            .transcript(&t.id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("held 30000000"))
    })
    .await;
    let api = env.handle.api.clone().unwrap();
    let mut live = None;
    for _ in 0..50 {
        let s: serde_json::Value = reqwest::get(format!("http://{api}/v1/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        live = s["tasks"][0].get("usage").cloned().filter(|u| !u.is_null());
        if live.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let live = live.expect("no live usage in /v1/status");
    assert!(live["cpu_ms"].as_u64().unwrap() > 0, "{live}");
    let done = env.finished(&t.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    until("transcript", || {
        env.cp.task(&t.id).is_some_and(|t| t.complete())
    })
    .await;
    let u = done.usage.expect("the berth/1 result carries usage");
    assert!(u.cpu_ms >= 200, "{u:?}");
    assert!(u.peak_memory_bytes >= 30_000_000, "{u:?}");
    assert!(u.samples >= 2, "{u:?}");
    assert!(u.network_rx_bytes >= 4_000_000, "{u:?}");
    let text = String::from_utf8_lossy(&env.cp.transcript(&t.id).unwrap()).into_owned();
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("[berth] usage: cpu "),
        "last line {last:?} of:\n{text}"
    );
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("berth_task_cpu_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_task_peak_memory_bytes_count 1"),
        "{metrics}"
    );
}

/// Whether the host firewall still has the chain berth made for `bridge`.
fn chain_exists(bridge: &str) -> bool {
    let chain = berth::egress::firewall::chain(bridge);
    Command::new("iptables")
        .args(["-w", "-S", &chain])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_one_shot_allowlisted_runs_leave_no_network_or_firewall_chain() {
    // One unique worker id per job, as docs/commands.md recommends for --one-shot: each run must leave
    // nothing behind, or the engine's address pools run out after a few dozen.
    let _images = Images::acquire();
    let cp = control_plane("proc-key", true, None).await;
    let yaml = format!(
        "backend:\n  docker:\n    default_image: {BUSYBOX}\n    pull_policy: never\n    policy:\n      egress:\n        mode: allowlist\n        allow: ['example.invalid:443']\n        proxy_port: {}\n",
        free_port()
    );
    for run in 0..40 {
        let id = worker_id(&format!("oneshot-net-{run}"));
        let _cleanup = Cleanup(id.clone());
        let _sealed = SealedCleanup(id.clone());
        let state = tempfile::tempdir().unwrap();
        let t = cp.submit(script("echo hi"));
        let mut w = worker_process_with(&cp, &id, state.path(), &["--one-shot"], &yaml);
        let status = tokio::task::spawn_blocking(move || w.wait().unwrap())
            .await
            .unwrap();
        let log = std::fs::read_to_string(state.path().with_extension("log")).unwrap_or_default();
        assert_eq!(
            status.code(),
            Some(0),
            "run {run}: {:?}\n{log}",
            cp.task(&t.id)
        );
        let done = cp.task(&t.id).unwrap();
        assert_eq!(done.state, TaskState::Succeeded, "run {run}: {done:?}");
        let instance = std::fs::read_to_string(state.path().join("instance-id")).unwrap();
        let owner = berth::spec::owner::Owner::new(&id, instance.trim());
        let bridge = berth::egress::Gate::bridge_name(&owner);
        assert!(
            sealed_networks_of(&id).is_empty(),
            "run {run} left its sealed network:\n{log}"
        );
        assert!(
            !chain_exists(&bridge),
            "run {run} left its firewall chain for {bridge}:\n{log}"
        );
    }
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_removes_its_own_unused_sealed_networks_and_leaves_another_instances() {
    let cp = control_plane("proc-key", true, None).await;
    let id = worker_id("sweep");
    let _sealed = SealedCleanup(id.clone());
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("instance-id"), "inst-mine\n").unwrap();
    let create = |name: &str, instance: &str| {
        let out = Command::new("docker")
            .args([
                "network",
                "create",
                "--internal",
                "--label",
                "berth.managed=true",
            ])
            .arg("--label")
            .arg(format!("berth.worker_id={id}"))
            .arg("--label")
            .arg(format!("berth.instance={instance}"))
            .arg(name)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let (mine, theirs) = (format!("{id}-mine"), format!("{id}-theirs"));
    create(&mine, "inst-mine");
    create(&theirs, "inst-theirs");
    let mut w = worker_process(&cp, &id, state.path(), &[]);
    until("connected", || !cp.workers().is_empty()).await;
    let left: Vec<String> = sealed_networks_of(&id)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(left, [theirs], "only another instance's network stays");
    w.kill().unwrap();
    w.wait().unwrap();
    cp.shutdown();
}

/// A DNS server on the host's loopback that records every name asked and refuses it (so the
/// host's own lookups move on to its next server at once).
struct LoopbackResolver {
    asked: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoopbackResolver {
    async fn start() -> LoopbackResolver {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:53")
            .await
            .unwrap_or_else(|e| {
                panic!("this test needs 127.0.0.1:53 (root, nothing listening there): {e}")
            });
        let asked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let record = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let q = &mut buf[..n];
                if n < 12 {
                    continue;
                }
                record.lock().push(qname(&q[12..]));
                q[2] |= 0x80; // a response
                q[3] = (q[3] & 0xf0) | 5; // REFUSED
                let _ = sock.send_to(q, from).await;
            }
        });
        LoopbackResolver { asked, task }
    }

    fn saw(&self, token: &str) -> usize {
        self.asked
            .lock()
            .iter()
            .filter(|n| n.contains(token))
            .count()
    }
}

impl Drop for LoopbackResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The dotted name of a DNS question.
fn qname(mut q: &[u8]) -> String {
    let mut labels = Vec::new();
    while let Some((&len, rest)) = q.split_first() {
        let len = len as usize;
        if len == 0 || len > rest.len() {
            break;
        }
        labels.push(String::from_utf8_lossy(&rest[..len]).into_owned());
        q = &rest[len..];
    }
    labels.join(".")
}

/// The host's resolv.conf pointing at 127.0.0.1 first (as with systemd-resolved), put back on
/// drop. The engine reads it when a container starts, so the window is kept short.
struct HostResolvConf {
    path: &'static str,
    original: String,
}

impl HostResolvConf {
    fn loopback_first() -> HostResolvConf {
        // The file the engine reads: with only systemd-resolved's stub in /etc/resolv.conf,
        // dockerd uses the upstream list systemd-resolved keeps.
        let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let stub_only = etc
            .lines()
            .filter(|l| l.starts_with("nameserver"))
            .all(|l| l.trim() == "nameserver 127.0.0.53");
        let upstream = "/run/systemd/resolve/resolv.conf";
        let path = if stub_only && std::path::Path::new(upstream).exists() {
            upstream
        } else {
            "/etc/resolv.conf"
        };
        let original = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, format!("nameserver 127.0.0.1\n{original}")).unwrap();
        HostResolvConf { path, original }
    }
}

impl Drop for HostResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.original);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_and_networkless_tasks_cannot_reach_the_hosts_loopback_resolver() {
    // CVE-2024-29018: engines before 26.0 forward an internal network's unknown names to the
    // host's resolvers, from the host's namespace when the resolver is on loopback.
    let resolver = LoopbackResolver::start().await;
    let (env, _sealed) = allowlisted("dns", "example.invalid:443").await;
    let token = format!("t{}", uuid::Uuid::new_v4().simple());
    let probe = |tag: &str| {
        format!(
            "echo started; sleep 2; timeout 5 nslookup {tag}-1-{token}.example; \
             timeout 5 nslookup {tag}-2-{token}.example 127.0.0.11; echo done"
        )
    };
    let control_net = format!("berth-test-dns-{}", std::process::id());
    let ok = |args: &[&str]| {
        let o = Command::new("docker").args(args).output().unwrap();
        assert!(o.status.success(), "docker {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    ok(&[
        "network",
        "create",
        "--internal",
        "--label",
        "berth.test=true",
        &control_net,
    ]);
    let _control_cleanup = ControlCleanup(control_net.clone());
    let started = |id: &str| {
        env.cp
            .transcript(id)
            .is_some_and(|b| String::from_utf8_lossy(&b).contains("started"))
    };
    let (sealed, none, control) = {
        let _resolv = HostResolvConf::loopback_first();
        // What the engine does without berth's mitigation: a plain container on an internal
        // network (proves the channel is open on this engine).
        let control = ok(&[
            "run",
            "-d",
            "--label",
            "berth.test=true",
            "--network",
            &control_net,
            BUSYBOX,
            "sh",
            "-c",
            &probe("control"),
        ]);
        let sealed = env.cp.submit(script(&probe("sealed")));
        let none = env.cp.submit(SubmitRequest {
            environment: Some(serde_json::json!({"egress": {"mode": "none"}})),
            ..script(&probe("none"))
        });
        until("both tasks started", || {
            started(&sealed.id) && started(&none.id)
        })
        .await;
        (sealed, none, control)
    };
    for t in [&sealed, &none] {
        let done = env.finished(&t.id).await;
        assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    }
    ok(&["wait", &control]);
    let engine = ok(&["version", "-f", "{{.Server.Version}}"]);
    let exposed = berth::spec::dns::exposure(&engine) == berth::spec::dns::Exposure::Affected;
    let control_seen = resolver.saw(&format!("control-1-{token}"));
    eprintln!(
        "engine {engine}: a plain internal-network container's query reached the host's loopback resolver {control_seen} time(s)"
    );
    if exposed {
        assert!(
            control_seen > 0,
            "engine {engine} should forward from the host namespace; the test's resolver saw: {:?}",
            resolver.asked.lock()
        );
    }
    for tag in ["sealed", "none"] {
        assert_eq!(
            resolver.saw(&format!("{tag}-1-{token}")) + resolver.saw(&format!("{tag}-2-{token}")),
            0,
            "a {tag} task's DNS query left through the host's resolver: {:?}",
            resolver.asked.lock()
        );
    }
}

/// Removes the control container(s) and network of the DNS test (also when it panics).
struct ControlCleanup(String);

impl Drop for ControlCleanup {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("network={}", self.0))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}
