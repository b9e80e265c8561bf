//! HTTPS on 127.0.0.1 (a throwaway CA and a certificate for 127.0.0.1 and localhost, ring
//! provider, HTTP/1.1), bearer-token authentication, request records, RBAC deny rules and
//! injected faults in front of the API; taken down and brought back on the same port.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::api::{self, Answer, Req};
use super::faults::RequestRecord;
use super::state::Shared;
use super::status::{self, ApiError};

/// The fake's PKI: the CA clients trust, and the server's TLS configuration.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn pki() -> Result<Pki, String> {
    let e = |x: rcgen::Error| x.to_string();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fake-kubernetes-ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(e)?).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(e)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let cert = params.signed_by(&key, &ca).map_err(e)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|x| x.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|x| x.to_string())?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        server: Arc::new(server),
    })
}

/// Serves on `listener` until `cut` is cancelled, which also cuts every open connection
/// (watches and log streams end abruptly, as when an apiserver goes away).
pub fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cut: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = cut.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(_) => continue,
                },
            };
            let acceptor = acceptor.clone();
            let shared = shared.clone();
            let cut = cut.clone();
            tokio::spawn(async move {
                let conn = async {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { handle(shared, req, port).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                };
                tokio::select! {
                    _ = cut.cancelled() => {}
                    _ = conn => {}
                }
            });
        }
    });
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn respond(a: Answer) -> (u16, http::Response<Body>) {
    let build = |code: u16, ct: &str, body: Body, retry: Option<u64>| {
        let mut b = http::Response::builder()
            .status(code)
            .header("content-type", ct)
            .header("audit-id", uuid::Uuid::new_v4().to_string());
        if let Some(r) = retry {
            b = b.header("retry-after", r.to_string());
        }
        b.body(body)
            .unwrap_or_else(|_| http::Response::new(Body::empty()))
    };
    match a {
        Answer::Json(code, v) => (
            code,
            build(code, "application/json", Body::from(v.to_string()), None),
        ),
        Answer::Error(e) => (
            e.code,
            build(
                e.code,
                "application/json",
                Body::from(e.body().to_string()),
                e.retry_after,
            ),
        ),
        Answer::Text(b) => (200, build(200, "text/plain", Body::from(b), None)),
        Answer::Stream(ct, rx) => {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            (200, build(200, ct, Body::from_stream(stream), None))
        }
    }
}

/// The error a hyper service returns to drop the connection without an answer.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by an injected fault")
    }
}

impl std::error::Error for Reset {}

async fn handle(
    shared: Arc<Shared>,
    req: http::Request<hyper::body::Incoming>,
    port: u16,
) -> Result<http::Response<Body>, Reset> {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(Body::new(body), 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => Bytes::new(),
    };
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let r = Req {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query,
        content_type: parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body,
    };
    let target = api::target(&r.method, &r.path, &r.query);
    let mut record = RequestRecord {
        verb: parts.method.as_str().to_lowercase(),
        group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        path: r.path.clone(),
        watch: false,
        follow: r.q("follow").is_some_and(|f| f == "true" || f == "1"),
        status: 0,
    };
    if let Ok(Some(t)) = &target {
        record.verb = t.verb.to_string();
        record.group = t.res.group.to_string();
        record.resource = t.res.plural.to_string();
        record.subresource = t.sub.clone().unwrap_or_default();
        record.namespace = t.ns.clone().unwrap_or_default();
        record.name = t.name.clone().unwrap_or_default();
        record.watch = t.verb == "watch";
    }
    let token = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    // Decide under the lock: auth, faults, RBAC.
    let early: Option<Result<ApiError, Reset>> = {
        let mut st = shared.state.lock();
        let verdict = if token.as_deref() != Some(st.token.as_str()) {
            Some(Ok(status::unauthorized()))
        } else if let Some(f) = st.faults.iter_mut().find(|f| f.matches(&record)) {
            if let Some(n) = f.times.as_mut() {
                *n -= 1;
            }
            if f.reset {
                Some(Err(Reset))
            } else if f.code == 403 {
                match &target {
                    Ok(Some(t)) => Some(Ok(status::forbidden(
                        t.res,
                        t.sub.as_deref(),
                        t.name.as_deref(),
                        t.verb,
                        t.ns.as_deref(),
                    ))),
                    _ => Some(Ok(status::for_code(403, f.message.as_deref()))),
                }
            } else {
                let mut e = status::for_code(f.code, f.message.as_deref());
                e.retry_after = f.retry_after;
                Some(Ok(e))
            }
        } else if let Ok(Some(t)) = &target
            && st.denies(
                t.verb,
                t.res.group,
                &match &t.sub {
                    Some(s) => format!("{}/{s}", t.res.plural),
                    None => t.res.plural.to_string(),
                },
            )
        {
            Some(Ok(status::forbidden(
                t.res,
                t.sub.as_deref(),
                t.name.as_deref(),
                t.verb,
                t.ns.as_deref(),
            )))
        } else {
            None
        };
        if let Some(Err(Reset)) = &verdict {
            st.requests.push(record.clone());
        }
        verdict
    };
    let answer = match early {
        Some(Err(Reset)) => return Err(Reset),
        Some(Ok(e)) => Answer::Error(e),
        None => match target {
            Err(e) => Answer::Error(e),
            Ok(None) => api::non_resource(&shared, &r, port),
            Ok(Some(t)) => api::serve(&shared, &r, &t),
        },
    };
    let (code, resp) = respond(answer);
    record.status = code;
    shared.with(|st| st.requests.push(record));
    Ok(resp)
}
