//! One HTTP exchange of task-log export (identity request or batch), with PROTOCOL §8.3's
//! redirect rule: a redirect to the same scheme, host and port is followed with method, body
//! and headers intact; a cross-origin one is never followed, so no credential reaches another
//! origin. The client itself follows nothing (`Policy::none()`); this loop does.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Method, StatusCode};

/// Most same-origin redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Why an exchange gave no answer. Never carries a response's text or a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("timed out")]
    Timeout,
    #[error("connection failed")]
    Connect,
    #[error("request failed")]
    Request,
    #[error("redirected to another origin (not followed)")]
    CrossOrigin,
    #[error("redirected without a usable Location")]
    BadRedirect,
    #[error("too many redirects")]
    TooManyRedirects,
    #[error("response body too large")]
    TooLarge,
}

impl From<reqwest::Error> for SendError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            SendError::Timeout
        } else if e.is_connect() {
            SendError::Connect
        } else {
            SendError::Request
        }
    }
}

/// A request to send: method, URL, headers, body.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: Method,
    pub url: url::Url,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What came back: the final status and at most `max_body` bytes of body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// The client of task-log export: berth's TLS configuration, and no redirect followed by the
/// client itself ([`send`] applies the same-origin rule).
pub fn client(
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Where a redirect from `from` goes, if it may be followed.
pub fn redirect_target(from: &url::Url, location: &str) -> Result<url::Url, SendError> {
    let to = from.join(location).map_err(|_| SendError::BadRedirect)?;
    if to.origin() != from.origin() {
        return Err(SendError::CrossOrigin);
    }
    Ok(to)
}

/// Sends `x`, following same-origin redirects, the whole within `timeout`; reads at most
/// `max_body` bytes of the final answer (more is [`SendError::TooLarge`]).
pub async fn send(
    client: &reqwest::Client,
    x: &Exchange,
    timeout: Duration,
    max_body: usize,
) -> Result<Answer, SendError> {
    tokio::time::timeout(timeout, follow(client, x, max_body))
        .await
        .map_err(|_| SendError::Timeout)?
}

async fn follow(
    client: &reqwest::Client,
    x: &Exchange,
    max_body: usize,
) -> Result<Answer, SendError> {
    let mut url = x.url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut resp = client
            .request(x.method.clone(), url.clone())
            .headers(x.headers.clone())
            .body(x.body.clone())
            .send()
            .await?;
        let status = resp.status();
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let loc = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or(SendError::BadRedirect)?;
            url = redirect_target(&url, loc)?;
            continue;
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > max_body {
                return Err(SendError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(Answer {
            status,
            body: body.into(),
        });
    }
    Err(SendError::TooManyRedirects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_redirects_are_followed() {
        let from = url::Url::parse("https://c.example:8443/otlp/v1/logs").unwrap();
        let cases: &[(&str, Result<&str, SendError>)] = &[
            ("/other", Ok("https://c.example:8443/other")),
            ("v2", Ok("https://c.example:8443/otlp/v1/v2")),
            ("https://c.example:8443/x", Ok("https://c.example:8443/x")),
            ("https://c.example/x", Err(SendError::CrossOrigin)),
            ("http://c.example:8443/x", Err(SendError::CrossOrigin)),
            ("https://evil.example:8443/x", Err(SendError::CrossOrigin)),
            ("//evil.example/x", Err(SendError::CrossOrigin)),
        ];
        for (loc, want) in cases {
            let got = redirect_target(&from, loc);
            assert_eq!(
                got.as_ref().map(|u| u.as_str()).map_err(|e| *e),
                want.as_ref().map(|s| *s).map_err(|e| *e),
                "{loc}"
            );
        }
        // The default port is the same origin as the explicit one.
        let plain = url::Url::parse("https://c.example/a").unwrap();
        assert!(redirect_target(&plain, "https://c.example:443/b").is_ok());
    }
}
