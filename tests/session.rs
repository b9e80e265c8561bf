//! The control-plane link under TLS and faults: wss with a private CA and mutual TLS, dead-link
//! detection by heartbeat, and delivery of messages produced while disconnected. The link is
//! all real (sockets, TLS, the embedded control plane); the tasks run on the fake backend, as
//! nothing here is about the engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth::backend::fake::FakeBackend;
use berth::config::{self, Overrides};
use berth::devserver::state::TaskState;
use berth::devserver::{ControlPlane, ServerOptions};
use berth::secret::Secret;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support::*;

struct Pki {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

/// A throwaway CA, a server certificate for localhost, and a client certificate.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["worker".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.pem", ca.pem());
    write("client.pem", client_cert.pem());
    write("client.key", client_key.serialize_pem());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = berth::control::tls::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server_cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    Pki {
        dir,
        server: Arc::new(server),
    }
}

/// A TLS control plane requiring client certificates; its URL names the server by the
/// certificate's name, not its address.
async fn tls_control_plane(pki: &Pki) -> (ControlPlane, String) {
    let cp = ControlPlane::start(
        "127.0.0.1:0".parse().unwrap(),
        ServerOptions {
            api_key: "tls-key".into(),
            tls: Some(pki.server.clone()),
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let url = format!(
        "wss://localhost:{}/api/v1/selfhosted/worker/ws",
        cp.addr().port()
    );
    (cp, url)
}

fn tls_config(url: &str, id: &str, dir: &Path, client_cert: bool, ca: bool) -> config::Config {
    let mut yaml =
        format!("worker_id: {id}\ncontrol_plane:\n  url: {url}\n  heartbeat_interval: 2s\n");
    if ca {
        yaml.push_str(&format!("  ca_file: {}\n", dir.join("ca.pem").display()));
    }
    if client_cert {
        yaml.push_str(&format!(
            "  client_cert_file: {}\n  client_key_file: {}\n",
            dir.join("client.pem").display(),
            dir.join("client.key").display()
        ));
    }
    yaml.push_str(&format!(
        "backend:\n  docker:\n    default_image: {BUSYBOX}\n    pull_policy: never\n"
    ));
    let ov = Overrides {
        api_key: Some(Secret::new("tls-key")),
        api_listen: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    config::load_str(Some(&yaml), None, &ov, &|_| None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_private_ca_and_a_client_certificate_runs_tasks() {
    berth::control::tls::install_default_provider();
    let pki = pki();
    let (cp, url) = tls_control_plane(&pki).await;
    let id = worker_id("mtls");
    let fake = FakeBackend::new();
    let cfg = tls_config(&url, &id, pki.dir.path(), true, true);
    let (stop, _h, join) = start_fake_worker(cfg, &fake).await;
    until("worker connected over mTLS", || !cp.workers().is_empty()).await;
    let t = cp.submit(berth::devserver::state::SubmitRequest {
        image: Some(BUSYBOX.into()),
        command: vec!["true".into()],
        ..Default::default()
    });
    let done = cp.wait(&t.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    stop.cancel();
    join.await.unwrap();
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_or_a_missing_client_certificate_never_connects() {
    berth::control::tls::install_default_provider();
    let pki = pki();
    let (cp, url) = tls_control_plane(&pki).await;
    for (client_cert, ca) in [(true, false), (false, true)] {
        let id = worker_id("badtls");
        let cfg = tls_config(&url, &id, pki.dir.path(), client_cert, ca);
        let (stop, h, join) = start_fake_worker(cfg, &FakeBackend::new()).await;
        until("a failed dial", || {
            h.session.reconnects_dial_failed.load(Ordering::Relaxed) >= 1
        })
        .await;
        assert_eq!(
            h.session.handshakes.load(Ordering::Relaxed),
            0,
            "client_cert={client_cert} ca={ca}"
        );
        assert!(cp.workers().is_empty());
        stop.cancel();
        join.await.unwrap();
    }
    cp.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_declared_dead_after_two_heartbeats_and_redialled() {
    berth::control::tls::install_default_provider();
    // A server that completes the handshake and then never reads or writes again: no pongs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(ws);
            }
        }
    });
    let id = worker_id("silent");
    let yaml = format!(
        "worker_id: {id}\ncontrol_plane:\n  url: ws://{addr}/ws\n  heartbeat_interval: 1s\n"
    );
    let ov = Overrides {
        api_key: Some(Secret::new("k")),
        api_listen: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    let cfg = config::load_str(Some(&yaml), None, &ov, &|_| None).unwrap();
    let started = std::time::Instant::now();
    let (stop, h, join) = start_fake_worker(cfg, &FakeBackend::new()).await;
    until("second connection", || accepted.load(Ordering::SeqCst) >= 2).await;
    // Dead after 2 s of silence, then a jittered 0.5–1 s redial.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(h.session.reconnects_remote_close.load(Ordering::Relaxed) >= 1);
    stop.cancel();
    join.await.unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_produced_while_disconnected_is_delivered_after_reconnect() {
    let env = Env::start_fake("offline", EnvOptions::default()).await;
    let t = env.submit(&["sleep", "3"]);
    let fake = env.fake();
    env.until("running", || !fake.sandboxes_of_task(&t.id).is_empty())
        .await;
    let addr = env.cp.addr();
    env.cp.shutdown();
    // The task finishes while no server is there; its terminal message waits in the outbox.
    until("sandbox gone", || fake.sandboxes_of_task(&t.id).is_empty()).await;
    let cp2 = control_plane(&env.api_key, true, Some(addr)).await;
    until("result delivered to the new server", || {
        cp2.unknown_task_messages()
            .contains(&("task_completed".to_string(), t.id.clone()))
    })
    .await;
    cp2.shutdown();
}

/// A raw oz/1 server (no berth/1 header, none of PROTOCOL.md §8's fields) sees exactly the
/// frames the first contract specified, byte for byte: claim and result, nothing new. With an
/// `execution_id` in the assignment the result echoes it (§8.2), and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oz1_server_that_sends_nothing_new_sees_todays_frames_byte_for_byte() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    berth::control::tls::install_default_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frames = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let seen = frames.clone();
    let server = tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        for (task, exec) in [("run-1", ""), ("run-2", r#","execution_id":"exec-2""#)] {
            let assign = format!(
                r#"{{"type":"task_assignment","data":{{"task_id":"{task}"{exec},"task":{{"id":"{task}","title":"t","task_definition":{{"prompt":"p"}},"owner":{{"Type":"USER","Id":1}}}},"docker_image":"img"}}}}"#
            );
            ws.send(Message::text(assign)).await.unwrap();
        }
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                seen.lock().push(t.to_string());
            }
        }
    });
    let fake = FakeBackend::new();
    fake.script(
        "/agent/entrypoint.sh",
        berth::backend::fake::Script::new()
            .prints(berth::protocol::Stream::Stdout, "agent ran\n")
            .exits(0),
    );
    let id = worker_id("oz1-pin");
    let state = tempfile::tempdir().unwrap();
    let yaml = format!(
        "worker_id: {id}\ncontrol_plane:\n  url: ws://{addr}/ws\nadmission:\n  min_free_disk: 0\n"
    );
    let ov = Overrides {
        api_key: Some(Secret::new("k")),
        api_listen: Some("127.0.0.1:0".into()),
        state_dir: Some(state.path().to_path_buf()),
        ..Overrides::default()
    };
    let cfg = config::load_str(Some(&yaml), None, &ov, &|_| None).unwrap();
    let (stop, _h, join) = start_fake_worker(cfg, &fake).await;
    until("both results", || {
        frames
            .lock()
            .iter()
            .filter(|f| f.contains("task_completed"))
            .count()
            == 2
    })
    .await;
    // Anything else the worker would send unprompted has had time to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = frames.lock().clone();
    got.sort();
    let mut want = vec![
        format!(r#"{{"data":{{"task_id":"run-1","worker_id":"{id}"}},"type":"task_claimed"}}"#),
        r#"{"data":{"message":"Task completed successfully","task_id":"run-1"},"type":"task_completed"}"#.to_string(),
        format!(r#"{{"data":{{"execution_id":"exec-2","task_id":"run-2","worker_id":"{id}"}},"type":"task_claimed"}}"#),
        r#"{"data":{"execution_id":"exec-2","message":"Task completed successfully","task_id":"run-2"},"type":"task_completed"}"#.to_string(),
    ];
    want.sort();
    assert_eq!(got, want);
    stop.cancel();
    join.await.unwrap();
    server.abort();
}
