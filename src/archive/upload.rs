//! Sending the object to its target (PROTOCOL §8.4): PUT with the object as the body, or POST
//! as streamed `multipart/form-data`; redirects never followed; network errors, 408, 429 and
//! 5xx retried with backoff while the next attempt can start before `expires_at`. Nothing here
//! logs: the URL, headers, fields and answers carry credentials (reqwest's errors name the URL).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::multipart;
use super::reason::Reason;
use super::validate::{Method, Target};

/// First retry delay; doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(15);
/// Most response bytes read (then discarded).
const DRAIN: usize = 4 << 10;
/// Bytes read from the object file per body chunk.
const CHUNK: usize = 64 << 10;

/// The retry delays: 0.5 s, doubling, capped at 15 s.
pub fn delay(attempt: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_DELAY)
}

/// What an HTTP status means for the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Done,
    Retry,
    Rejected,
}

/// 2xx done; 408, 429 and 5xx retried; everything else (3xx included) rejected.
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Done,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Rejected,
    }
}

/// The HTTP client for uploads (no redirects, berth's TLS trust).
#[derive(Clone)]
pub struct Uploader {
    client: reqwest::Client,
}

impl Uploader {
    /// A client trusting what `tls` trusts.
    pub fn new(tls: &rustls::ClientConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.clone())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Uploader { client })
    }

    /// Uploads the `bytes`-long file at `object` to `target`, retrying until `expires_at`;
    /// `stop` ends it (worker shutdown).
    pub async fn upload(
        &self,
        target: &Target,
        object: &Path,
        bytes: u64,
        expires_at: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Result<(), Reason> {
        let mut attempt = 0u32;
        loop {
            let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return Err(Reason::UploadExpired);
            }
            let outcome = tokio::select! {
                r = tokio::time::timeout(left, self.attempt(target, object, bytes)) => r,
                _ = stop.cancelled() => return Err(Reason::WorkerShuttingDown),
            };
            match outcome {
                Err(_) => return Err(Reason::UploadExpired),
                Ok(Ok(Verdict::Done)) => return Ok(()),
                Ok(Ok(Verdict::Rejected)) => return Err(Reason::UploadRejected),
                Ok(Ok(Verdict::Retry)) | Ok(Err(())) => {}
            }
            let wait = delay(attempt);
            attempt += 1;
            let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            if next >= expires_at {
                return Err(Reason::UploadFailed);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return Err(Reason::WorkerShuttingDown),
            }
        }
    }

    /// One attempt: `Err(())` for a network error (retried).
    async fn attempt(&self, target: &Target, object: &Path, bytes: u64) -> Result<Verdict, ()> {
        let file = tokio::fs::File::open(object).await.map_err(|_| ())?;
        let method = match target.method {
            Method::Put => reqwest::Method::PUT,
            Method::Post => reqwest::Method::POST,
        };
        let mut req = self.client.request(method, target.url.clone());
        for (k, v) in &target.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let has_type = target
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"));
        let req = match target.method {
            Method::Put => {
                let req = if has_type {
                    req
                } else {
                    req.header(reqwest::header::CONTENT_TYPE, super::validate::FORMAT)
                };
                req.header(reqwest::header::CONTENT_LENGTH, bytes)
                    .body(reqwest::Body::wrap_stream(file_stream(file)))
            }
            Method::Post => {
                let f = multipart::frame(&target.fields, &multipart::random_boundary());
                let len = f.body_len(bytes);
                let body = futures_util::stream::iter([Ok(Bytes::from(f.head))])
                    .chain(file_stream(file))
                    .chain(futures_util::stream::iter([Ok(Bytes::from(f.tail))]));
                req.header(reqwest::header::CONTENT_TYPE, f.content_type)
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(reqwest::Body::wrap_stream(body))
            }
        };
        let mut resp = match req.send().await {
            Ok(r) => r,
            // A request that cannot even be built will not build next time either.
            Err(e) if e.is_builder() => return Ok(Verdict::Rejected),
            Err(_) => return Err(()),
        };
        let v = verdict(resp.status().as_u16());
        // Read a little of the answer so the connection can be reused; never kept or logged.
        let mut drained = 0usize;
        while drained < DRAIN {
            match resp.chunk().await {
                Ok(Some(c)) => drained += c.len(),
                _ => break,
            }
        }
        Ok(v)
    }
}

/// The file as a body stream, a chunk at a time.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::try_unfold(file, |mut f| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), f)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_half_a_second_up_to_fifteen() {
        let d: Vec<u64> = (0..8).map(|a| delay(a).as_millis() as u64).collect();
        assert_eq!(d, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn statuses_are_done_retried_or_rejected() {
        for (s, v) in [
            (200, Verdict::Done),
            (204, Verdict::Done),
            (301, Verdict::Rejected),
            (307, Verdict::Rejected),
            (400, Verdict::Rejected),
            (403, Verdict::Rejected),
            (408, Verdict::Retry),
            (429, Verdict::Retry),
            (500, Verdict::Retry),
            (503, Verdict::Retry),
            (101, Verdict::Rejected),
        ] {
            assert_eq!(verdict(s), v, "{s}");
        }
    }
}
