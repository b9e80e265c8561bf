//! berth's egress proxy: an HTTP forward proxy (absolute-form requests) and `CONNECT` tunnels
//! (TLS passes through untouched), listening on the sealed network's gateway. Each connection
//! is attributed to the task by its source address, checked against that task's egress, and
//! counted; a denial is answered with 403 naming the destination and the policy key.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Admissions;
use crate::spec::egress::Decision;

/// Most bytes of a request head.
const MAX_HEAD: usize = 16 * 1024;
/// Longest wait for a request head, a task's admission, or an upstream connect.
const PATIENCE: Duration = Duration::from_secs(10);
/// Most connections through the proxy at once (file descriptors are finite).
const MAX_CONNECTIONS: usize = 1024;

/// What a request head asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `CONNECT` (a tunnel) or a plain HTTP request to forward.
    pub tunnel: bool,
    pub host: String,
    pub port: u16,
    /// For forwarded requests: the head rewritten to origin form, without proxy headers.
    pub forward_head: Vec<u8>,
}

/// Parses a proxy request head (everything up to and including the blank line). Pure.
pub fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let first = lines.next().ok_or("empty request")?;
    let mut parts = first.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if parts.next().is_none() && v.starts_with("HTTP/1.") => {
            (m, t, v)
        }
        _ => return Err("malformed request line"),
    };
    if method == "CONNECT" {
        let (host, port) = split_authority(target, None).ok_or("CONNECT needs host:port")?;
        return Ok(Request {
            tunnel: true,
            host,
            port,
            forward_head: Vec::new(),
        });
    }
    let rest = target
        .strip_prefix("http://")
        .ok_or("only http:// URLs are forwarded; use CONNECT (https_proxy) for TLS")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = split_authority(authority, Some(80)).ok_or("bad host in URL")?;
    let mut out = format!("{method} {path} {version}\r\n");
    for l in lines {
        let name = l.split(':').next().unwrap_or_default().to_ascii_lowercase();
        if name.starts_with("proxy-") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    // `lines` ended with the blank line's two empty pieces: one CRLF too many is trimmed.
    while out.ends_with("\r\n\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    Ok(Request {
        tunnel: false,
        host,
        port,
        forward_head: out.into_bytes(),
    })
}

fn split_authority(a: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port?,
        };
        (h.to_string(), port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (a.to_string(), default_port?),
        }
    };
    (!host.is_empty() && port > 0).then_some((host.to_ascii_lowercase(), port))
}

/// Serves the proxy until `stop`.
pub async fn serve(
    listener: TcpListener,
    admissions: Arc<Admissions>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (client, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "egress proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(client);
            continue;
        };
        let admissions = admissions.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = handle(client, peer, &admissions, &metrics) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
    conns.close();
}

async fn read_head(c: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too large");
        }
        let n = c.read(&mut chunk).await.map_err(|_| "read failed")?;
        if n == 0 {
            return Err("closed before the request head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(c: &mut TcpStream, status: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = c.write_all(msg.as_bytes()).await;
    let _ = c.shutdown().await;
}

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    admissions: &Admissions,
    metrics: &crate::metrics::Metrics,
) {
    let Some(task) = admissions.wait_for(peer.ip(), PATIENCE).await else {
        metrics.egress(false);
        answer(
            &mut client,
            "403 Forbidden",
            "berth egress: this address is not a task of this worker\n",
        )
        .await;
        return;
    };
    let (head, rest) = match tokio::time::timeout(PATIENCE, read_head(&mut client)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            return answer(
                &mut client,
                "400 Bad Request",
                &format!("berth egress: {e}\n"),
            )
            .await;
        }
        Err(_) => return,
    };
    let req = match parse_head(&head) {
        Ok(r) => r,
        Err(e) => {
            return answer(
                &mut client,
                "400 Bad Request",
                &format!("berth egress: {e}\n"),
            )
            .await;
        }
    };
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(
        PATIENCE,
        tokio::net::lookup_host((req.host.as_str(), req.port)),
    )
    .await
    {
        Ok(Ok(a)) => a.collect(),
        _ => Vec::new(),
    };
    let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    let decision = task.egress.decide(&req.host, req.port, &ips);
    let dest = if req.host.contains(':') {
        format!("[{}]:{}", req.host, req.port)
    } else {
        format!("{}:{}", req.host, req.port)
    };
    task.count(&dest, decision);
    metrics.egress(decision == Decision::Allowed);
    if decision == Decision::Denied {
        debug!(execution_id = %task.execution_id, destination = %dest, "egress denied");
        return answer(
            &mut client,
            "403 Forbidden",
            &format!("berth egress policy: {dest} is not allowed (policy.egress)\n"),
        )
        .await;
    }
    let upstream = match tokio::time::timeout(PATIENCE, TcpStream::connect(&addrs[..])).await {
        Ok(Ok(u)) => u,
        _ => {
            return answer(
                &mut client,
                "502 Bad Gateway",
                &format!("berth egress: cannot connect to {dest}\n"),
            )
            .await;
        }
    };
    let mut upstream = upstream;
    if req.tunnel {
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    } else if upstream.write_all(&req.forward_head).await.is_err() {
        return;
    }
    if !rest.is_empty() && upstream.write_all(&rest).await.is_err() {
        return;
    }
    // Everything else on this connection goes to the one destination that was checked.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_into_a_destination_and_an_origin_form_request() {
        let r = parse_head(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n").unwrap();
        assert_eq!((r.tunnel, r.host.as_str(), r.port), (true, "pypi.org", 443));
        let r = parse_head(
            b"GET http://Example.COM:8080/a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.tunnel, r.host.as_str(), r.port),
            (false, "example.com", 8080)
        );
        assert_eq!(
            String::from_utf8(r.forward_head).unwrap(),
            "GET /a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n"
        );
        let r = parse_head(b"GET http://10.0.0.1 HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("10.0.0.1", 80));
        assert_eq!(
            String::from_utf8(r.forward_head).unwrap(),
            "GET / HTTP/1.0\r\n\r\n"
        );
        let r = parse_head(b"CONNECT [fd00::1]:443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("fd00::1", 443));
        for bad in [
            &b"GET /relative HTTP/1.1\r\n\r\n"[..],
            b"GET https://x/ HTTP/1.1\r\n\r\n",
            b"CONNECT host HTTP/1.1\r\n\r\n",
            b"CONNECT host:0 HTTP/1.1\r\n\r\n",
            b"nonsense\r\n\r\n",
            b"GET http://x/ SPDY/3\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
