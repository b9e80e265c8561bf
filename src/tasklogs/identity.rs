//! The identity token that authenticates the collector (PROTOCOL §8.3): a short-lived,
//! per-execution token from the server's GraphQL API, requested lazily, refreshed about a
//! minute before it expires (one refresh shared by concurrent exports), kept while still
//! valid when a refresh fails, and retried within 30 s. No text of the answer is kept or
//! logged; the token itself is a secret.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::gates::Plan;
use super::transport::{Exchange, SendError, send};
use crate::secret::Secret;

/// Audience of the token.
pub const AUDIENCE: &str = "warp-cloud-agent-otel";
/// Lifetime asked for.
pub const DURATION_SECS: u64 = 10800;
/// Longest an identity request may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read.
pub const MAX_ANSWER: usize = 64 << 10;
/// A token this close to its expiry is refreshed.
pub const REFRESH_BEFORE: chrono::Duration = chrono::Duration::seconds(60);
/// After a failed request, the next one is at most this far away.
pub const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(30);

/// The mutation the Go worker sends.
pub const QUERY: &str = "mutation WorkerLogToken($input: IssueTaskIdentityTokenInput!) { issueTaskIdentityToken(requestContext: {osContext: {}, clientContext: {}}, input: $input) { __typename ... on IssueTaskIdentityTokenOutput { token expiresAt } } }";

/// Header naming the run.
const AGENT_ID_HEADER: &str = "X-Warp-Cloud-Agent-ID";
/// Header carrying the run's workload token.
const WORKLOAD_HEADER: &str = "X-Warp-Ambient-Workload-Token";
const OUTPUT_TYPE: &str = "IssueTaskIdentityTokenOutput";

/// The request body.
pub fn body() -> serde_json::Value {
    serde_json::json!({
        "query": QUERY,
        "variables": {"input": {"audience": AUDIENCE, "requestedDurationSeconds": DURATION_SECS}},
    })
}

/// An issued token.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub value: Secret,
    pub expires_at: DateTime<Utc>,
}

/// Why an answer was not a token (no text of it is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("identity endpoint answered HTTP {0}")]
    Status(u16),
    #[error("identity answer is not the expected JSON")]
    Shape,
    #[error("identity answer carries errors")]
    Errors,
    #[error("identity answer is not an IssueTaskIdentityTokenOutput")]
    Typename,
    #[error("identity answer has an empty token")]
    EmptyToken,
    #[error("identity token is already expired")]
    Expired,
    #[error("identity request failed: {0}")]
    Send(SendError),
    #[error("no identity token yet (the next request is within 30 s)")]
    Waiting,
}

/// Accepts an answer only as PROTOCOL §8.3 says: 200, JSON within 64 KiB (the reader
/// enforces the size), no `errors` array, the output type, a token, a future expiry.
pub fn accept(status: u16, body: &[u8], now: DateTime<Utc>) -> Result<Token, Unavailable> {
    if status != 200 {
        return Err(Unavailable::Status(status));
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| Unavailable::Shape)?;
    if v.get("errors").is_some_and(serde_json::Value::is_array) {
        return Err(Unavailable::Errors);
    }
    let out = v
        .pointer("/data/issueTaskIdentityToken")
        .ok_or(Unavailable::Shape)?;
    if out.get("__typename").and_then(|t| t.as_str()) != Some(OUTPUT_TYPE) {
        return Err(Unavailable::Typename);
    }
    let token = out.get("token").and_then(|t| t.as_str()).unwrap_or("");
    if token.is_empty() {
        return Err(Unavailable::EmptyToken);
    }
    let expires_at = out
        .get("expiresAt")
        .and_then(|t| t.as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .ok_or(Unavailable::Shape)?
        .with_timezone(&Utc);
    if expires_at <= now {
        return Err(Unavailable::Expired);
    }
    Ok(Token {
        value: Secret::new(token),
        expires_at,
    })
}

/// The token state of one execution.
#[derive(Debug, Default)]
pub struct State {
    pub token: Option<Token>,
    /// No request before this (after a failure).
    pub not_before: Option<DateTime<Utc>>,
}

/// What to do for an export at `now`.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The current token is good.
    Use(Token),
    /// Ask for a token; if that fails, fall back to this still-valid one.
    Request(Option<Token>),
    /// Wait for the retry time; meanwhile use this one (if any is still valid).
    Hold(Option<Token>),
}

/// The pure refresh rule.
pub fn step(s: &State, now: DateTime<Utc>) -> Step {
    let valid = s.token.clone().filter(|t| t.expires_at > now);
    match &valid {
        Some(t) if now < t.expires_at - REFRESH_BEFORE => Step::Use(t.clone()),
        _ if s.not_before.is_some_and(|nb| now < nb) => Step::Hold(valid),
        _ => Step::Request(valid),
    }
}

/// One execution's identity: where to ask, with which credentials, and the token state
/// (an async lock, so concurrent exports share one refresh).
pub struct Identity {
    client: reqwest::Client,
    plan: Plan,
    task_id: String,
    state: tokio::sync::Mutex<State>,
}

/// A token for an export, and whether it was just issued (to register for redaction).
pub struct Issued {
    pub token: Token,
    pub fresh: bool,
}

impl Identity {
    pub fn new(client: reqwest::Client, plan: Plan, task_id: &str) -> Self {
        Identity {
            client,
            plan,
            task_id: task_id.to_string(),
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// A token to export with now, requesting or refreshing as needed.
    pub async fn token(&self) -> Result<Issued, Unavailable> {
        let mut s = self.state.lock().await;
        let now = Utc::now();
        let fallback = match step(&s, now) {
            Step::Use(token) => {
                return Ok(Issued {
                    token,
                    fresh: false,
                });
            }
            Step::Hold(Some(token)) => {
                return Ok(Issued {
                    token,
                    fresh: false,
                });
            }
            Step::Hold(None) => return Err(Unavailable::Waiting),
            Step::Request(f) => f,
        };
        match self.request().await {
            Ok(token) => {
                s.token = Some(token.clone());
                s.not_before = None;
                Ok(Issued { token, fresh: true })
            }
            Err(e) => {
                s.not_before = Some(Utc::now() + RETRY_AFTER);
                fallback
                    .map(|token| Issued {
                        token,
                        fresh: false,
                    })
                    .ok_or(e)
            }
        }
    }

    async fn request(&self) -> Result<Token, Unavailable> {
        let x = self.exchange().map_err(|_| Unavailable::Shape)?;
        let a = send(&self.client, &x, TIMEOUT, MAX_ANSWER)
            .await
            .map_err(Unavailable::Send)?;
        accept(status_u16(a.status), &a.body, Utc::now())
    }

    /// The request with its headers (credentials marked sensitive).
    pub fn exchange(&self) -> Result<Exchange, reqwest::header::InvalidHeaderValue> {
        Ok(Exchange {
            method: Method::POST,
            url: self.plan.identity_url.clone(),
            headers: headers(&self.plan, &self.task_id)?,
            body: Bytes::from(body().to_string()),
        })
    }
}

fn status_u16(s: StatusCode) -> u16 {
    s.as_u16()
}

/// The identity request's headers.
pub fn headers(
    plan: &Plan,
    task_id: &str,
) -> Result<HeaderMap, reqwest::header::InvalidHeaderValue> {
    let sensitive = |v: &str| {
        HeaderValue::from_str(v).map(|mut h| {
            h.set_sensitive(true);
            h
        })
    };
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        AUTHORIZATION,
        sensitive(&format!("Bearer {}", plan.api_key.expose()))?,
    );
    h.insert(AGENT_ID_HEADER, HeaderValue::from_str(task_id)?);
    h.insert(WORKLOAD_HEADER, sensitive(plan.workload_token.expose())?);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const NOW: &str = "2026-12-06T10:00:00Z";

    fn answer(typename: &str, token: &str, expires: &str) -> Vec<u8> {
        serde_json::json!({"data": {"issueTaskIdentityToken": {
            "__typename": typename, "token": token, "expiresAt": expires}}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_body_is_the_go_workers_mutation() {
        let b = body();
        assert_eq!(b["variables"]["input"]["audience"], "warp-cloud-agent-otel");
        assert_eq!(b["variables"]["input"]["requestedDurationSeconds"], 10800);
        let q = b["query"].as_str().unwrap();
        for part in [
            "mutation WorkerLogToken($input: IssueTaskIdentityTokenInput!)",
            "issueTaskIdentityToken(requestContext: {osContext: {}, clientContext: {}}, input: $input)",
            "__typename",
            "... on IssueTaskIdentityTokenOutput { token expiresAt }",
        ] {
            assert!(q.contains(part), "{part}");
        }
    }

    #[test]
    fn only_a_well_formed_answer_is_a_token() {
        let now = at(NOW);
        let good = answer(OUTPUT_TYPE, "tok", "2026-12-06T13:00:00Z");
        let t = accept(200, &good, now).unwrap();
        assert_eq!(t.value.expose(), "tok");
        assert_eq!(t.expires_at, at("2026-12-06T13:00:00Z"));
        let cases: Vec<(u16, Vec<u8>, Unavailable)> = vec![
            (500, good.clone(), Unavailable::Status(500)),
            (201, good.clone(), Unavailable::Status(201)),
            (200, b"not json".to_vec(), Unavailable::Shape),
            (200, br#"{"data":{}}"#.to_vec(), Unavailable::Shape),
            (
                200,
                br#"{"errors":[{"message":"no"}],"data":{"issueTaskIdentityToken":{"__typename":"IssueTaskIdentityTokenOutput","token":"t","expiresAt":"2026-12-06T13:00:00Z"}}}"#.to_vec(),
                Unavailable::Errors,
            ),
            (200, answer("UserFacingError", "tok", "2026-12-06T13:00:00Z"), Unavailable::Typename),
            (200, answer(OUTPUT_TYPE, "", "2026-12-06T13:00:00Z"), Unavailable::EmptyToken),
            (200, answer(OUTPUT_TYPE, "tok", "2026-12-06T10:00:00Z"), Unavailable::Expired),
            (200, answer(OUTPUT_TYPE, "tok", "yesterday"), Unavailable::Shape),
        ];
        for (status, body, want) in cases {
            assert_eq!(accept(status, &body, now), Err(want));
        }
    }

    fn tok(expires: &str) -> Token {
        Token {
            value: Secret::new("t"),
            expires_at: at(expires),
        }
    }

    #[test]
    fn the_token_is_reused_then_refreshed_a_minute_before_expiry() {
        let now = at(NOW);
        let s = State::default();
        assert_eq!(
            step(&s, now),
            Step::Request(None),
            "lazily, at the first export"
        );
        let s = State {
            token: Some(tok("2026-12-06T10:05:00Z")),
            not_before: None,
        };
        assert!(matches!(step(&s, now), Step::Use(_)));
        let s = State {
            token: Some(tok("2026-12-06T10:00:50Z")),
            not_before: None,
        };
        assert_eq!(
            step(&s, now),
            Step::Request(Some(tok("2026-12-06T10:00:50Z"))),
            "refresh, keeping the valid one as fallback"
        );
    }

    #[test]
    fn after_a_failed_refresh_the_valid_token_is_kept_until_the_retry() {
        let now = at(NOW);
        let s = State {
            token: Some(tok("2026-12-06T10:00:30Z")),
            not_before: Some(at("2026-12-06T10:00:20Z")),
        };
        assert_eq!(step(&s, now), Step::Hold(Some(tok("2026-12-06T10:00:30Z"))));
        assert_eq!(
            step(&s, at("2026-12-06T10:00:20Z")),
            Step::Request(Some(tok("2026-12-06T10:00:30Z")))
        );
        // An expired token is never used.
        let s = State {
            token: Some(tok("2026-12-06T09:59:00Z")),
            not_before: Some(at("2026-12-06T10:00:20Z")),
        };
        assert_eq!(step(&s, now), Step::Hold(None));
        assert_eq!(step(&s, at("2026-12-06T10:01:00Z")), Step::Request(None));
    }
}
