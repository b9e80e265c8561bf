//! Environments served by the control plane's HTTP API (`control_plane.environments_url`).
//!
//! Each id is fetched with the worker's bearer key and cached with a TTL; once the TTL has
//! passed the copy is revalidated with `If-None-Match` (a `304` only renews it). When the API
//! fails (network, 5xx) a cached copy is used, however old, with a warning: a control-plane
//! hiccup must not fail tasks that ran a minute ago. A `404` is authoritative and drops the copy.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use crate::secret::Secret;
use crate::spec::environment::{Definition, Environment};

/// Largest environment document accepted.
const MAX_BODY: usize = 1 << 20;

/// How a returned environment was obtained (announced in the transcript).
#[derive(Debug, Clone, PartialEq)]
pub enum Freshness {
    /// Fetched now.
    Fetched,
    /// Cached and within the TTL.
    Cached,
    /// Cached, TTL passed, the server said it is unchanged (`304`).
    Revalidated,
    /// The API failed; this is the last copy seen (the failure is given).
    Stale(String),
}

/// Why an environment could not be obtained.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    /// The API failed and there is no cached copy.
    #[error(
        "environment {id} could not be fetched from {url} ({reason}) and no earlier copy is cached; check control_plane.environments_url and that the control plane's API is reachable from this host"
    )]
    Unavailable {
        /// Environment id.
        id: String,
        /// The URL asked.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The API says the id does not exist.
    #[error(
        "environment {id} does not exist on the control plane ({url} answered 404); fix the task's environment_id or define it in the operator's `environments:`"
    )]
    NotFound {
        /// Environment id.
        id: String,
        /// The URL asked.
        url: String,
    },
    /// The document is not a valid environment.
    #[error("environment {id} from {url} is invalid: {problem}")]
    Invalid {
        /// Environment id.
        id: String,
        /// The URL asked.
        url: String,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Clone)]
struct Entry {
    env: Environment,
    etag: Option<String>,
    checked: Instant,
}

/// The cache of fetched environments.
pub struct Catalog {
    client: reqwest::Client,
    template: String,
    api_key: Secret,
    ttl: Duration,
    cache: Mutex<HashMap<String, Entry>>,
    /// One fetch per id at a time: concurrent tasks of one environment share it.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// `s` percent-encoded as one URL path segment (RFC 3986 unreserved characters kept).
pub fn encode_segment(s: &str) -> String {
    let mut enc = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            enc.push(char::from(b));
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    enc
}

/// The URL of environment `id`: `{id}` in the template replaced by the percent-encoded id.
pub fn url_for(template: &str, id: &str) -> String {
    template.replace("{id}", &encode_segment(id))
}

enum Answer {
    Body(Vec<u8>, Option<String>),
    NotModified,
    NotFound,
}

impl Catalog {
    /// A catalog over `template` (validated by the config: it contains `{id}`).
    pub fn new(
        template: String,
        api_key: Secret,
        ttl: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Catalog {
            client,
            template,
            api_key,
            ttl,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    fn cached_entry(&self, id: &str) -> Option<Entry> {
        self.cache.lock().get(id).cloned()
    }

    fn store(&self, id: &str, entry: Option<Entry>) {
        let mut c = self.cache.lock();
        match entry {
            Some(e) => c.insert(id.to_string(), e),
            None => c.remove(id),
        };
    }

    /// The cached copy of `id`, however old, without asking the server (for admission).
    pub fn peek(&self, id: &str) -> Option<Environment> {
        self.cached_entry(id).map(|e| e.env)
    }

    async fn ask(&self, url: &str, etag: Option<&str>) -> Result<Answer, String> {
        let mut req = self
            .client
            .get(url)
            .bearer_auth(self.api_key.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, t);
        }
        let resp = req.send().await.map_err(|e| {
            // reqwest's Display hides the cause ("error sending request"): show the chain.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Answer::NotModified);
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Answer::NotFound);
        }
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(format!("response larger than {MAX_BODY} bytes"));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_BODY {
            return Err(format!("response larger than {MAX_BODY} bytes"));
        }
        Ok(Answer::Body(body.to_vec(), etag))
    }

    /// Environment `id`: from the cache within the TTL, else from the API (revalidating the
    /// cached copy), else the stale copy.
    pub async fn get(&self, id: &str) -> Result<(Environment, Freshness), CatalogError> {
        let lock = {
            let mut m = self.inflight.lock();
            m.entry(id.to_string()).or_default().clone()
        };
        let _one = lock.lock().await;
        let cached = self.cached_entry(id);
        if let Some(e) = &cached
            && e.checked.elapsed() < self.ttl
        {
            return Ok((e.env.clone(), Freshness::Cached));
        }
        let url = url_for(&self.template, id);
        let name = format!("api:{id}");
        match self
            .ask(&url, cached.as_ref().and_then(|e| e.etag.as_deref()))
            .await
        {
            Ok(Answer::Body(body, etag)) => {
                let parsed = serde_json::from_slice::<serde_json::Value>(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|v| Definition::parse(&name, &v).map_err(|e| e.to_string()));
                match parsed {
                    Ok(env) => {
                        debug!(environment = %id, etag = ?etag, "environment fetched");
                        self.store(
                            id,
                            Some(Entry {
                                env: env.clone(),
                                etag,
                                checked: Instant::now(),
                            }),
                        );
                        Ok((env, Freshness::Fetched))
                    }
                    Err(problem) => Err(CatalogError::Invalid {
                        id: id.to_string(),
                        url,
                        problem,
                    }),
                }
            }
            Ok(Answer::NotModified) => match cached {
                Some(mut e) => {
                    e.checked = Instant::now();
                    self.store(id, Some(e.clone()));
                    Ok((e.env, Freshness::Revalidated))
                }
                None => Err(CatalogError::Unavailable {
                    id: id.to_string(),
                    url,
                    reason: "304 Not Modified to a request without a cached copy".into(),
                }),
            },
            Ok(Answer::NotFound) => {
                self.store(id, None);
                Err(CatalogError::NotFound {
                    id: id.to_string(),
                    url,
                })
            }
            Err(reason) => match cached {
                Some(e) => {
                    warn!(environment = %id, url = %crate::transcript::redaction::display_url(&url), error = %reason, "environment API failed; using the cached copy");
                    Ok((e.env, Freshness::Stale(reason)))
                }
                None => Err(CatalogError::Unavailable {
                    id: id.to_string(),
                    url,
                    reason,
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_into_the_template() {
        assert_eq!(
            url_for("https://cp/api/v1/environments/{id}", "py-3.12_x~"),
            "https://cp/api/v1/environments/py-3.12_x~"
        );
        assert_eq!(
            url_for("https://cp/env/{id}?v=1", "a b/../c"),
            "https://cp/env/a%20b%2F..%2Fc?v=1"
        );
        assert_eq!(
            url_for("https://cp/e?id={id}", "é"),
            "https://cp/e?id=%C3%A9"
        );
    }
}
