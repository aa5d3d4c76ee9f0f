//! OAuth 2.0 client-credentials tokens for `credentials.oauth2` keys.
//!
//! One [`TokenSource`] per (API, key). A token is used until
//! `expires_in - refresh_before` and then refreshed by exactly one request
//! (single flight): the others keep using the old token while it is still
//! valid, or wait for the refresh when there is none. A failed fetch is
//! retried a few times with a short backoff (100 ms, then 400 ms) when the
//! failure may be transient (connect error, timeout, 429, 5xx); after that a
//! still-valid token keeps being used, and without one the request is
//! answered 503 `credential_unavailable`. A failure is remembered for
//! [`FAILURE_HOLD`], so a dead token endpoint is not hammered by every request.
//!
//! The token request goes through the same guarded connector as upstream
//! traffic (DNS pinning, network guard, TLS verification). Tokens and the
//! client secret are never logged: only the API, key name, client id and the
//! endpoint's status.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tollgate_policy::{ErrorCode, GatewayError, OAuth2Spec, Policy};
use tollgate_telemetry::Metrics;

use crate::upstream::Connector;

/// Delays before the second and third attempt of one token fetch.
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];
/// After a fetch failed (all attempts), requests do not try again for this long.
pub const FAILURE_HOLD: Duration = Duration::from_secs(2);
/// Lifetime assumed when the token response has no `expires_in`.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(300);
/// Largest token response read.
const MAX_RESPONSE: usize = 64 * 1024;

/// A token as the endpoint gave it.
#[derive(Debug)]
pub struct Fetched {
    /// `Bearer <access_token>`, marked sensitive.
    pub bearer: HeaderValue,
    pub expires_in: Duration,
}

/// Why one fetch attempt failed (never contains a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Worth retrying: connect error, timeout, 429 or 5xx.
    Transient(String),
    /// Retrying will not help: e.g. 401 (bad client secret) or a malformed answer.
    Permanent(String),
}

impl FetchError {
    fn reason(&self) -> &str {
        match self {
            Self::Transient(r) | Self::Permanent(r) => r,
        }
    }
}

struct Token {
    bearer: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    token: Option<Token>,
    /// No fetch before this instant (after a failure), and why it failed.
    failed: Option<(Instant, String)>,
}

/// The cached token and the single-flight refresh lock. Shared across a
/// reload when the key's token request is unchanged.
#[derive(Default)]
pub struct TokenCache {
    state: Mutex<State>,
    refresh: tokio::sync::Mutex<()>,
}

enum Cached {
    Fresh(HeaderValue),
    /// Past its refresh time but not expired.
    Valid(HeaderValue),
    None,
}

impl TokenCache {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data, consistent after every assignment.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, now: Instant) -> Cached {
        match &self.lock().token {
            Some(t) if now < t.refresh_at => Cached::Fresh(t.bearer.clone()),
            Some(t) if now < t.expires_at => Cached::Valid(t.bearer.clone()),
            _ => Cached::None,
        }
    }

    /// The `Authorization` value to send, fetching a token with `fetch` when
    /// needed (one fetch at a time). `Err` carries a reason safe to show.
    pub async fn get<F, Fut>(
        &self,
        refresh_before: Duration,
        fetch: F,
    ) -> Result<HeaderValue, String>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Fetched, FetchError>>,
    {
        let valid = match self.cached(Instant::now()) {
            Cached::Fresh(v) => return Ok(v),
            Cached::Valid(v) => Some(v),
            Cached::None => None,
        };
        let _flight = match (self.refresh.try_lock(), valid) {
            (Ok(g), _) => g,
            // Another request is refreshing: keep using the valid token.
            (Err(_), Some(v)) => return Ok(v),
            (Err(_), None) => self.refresh.lock().await,
        };
        // The refresh we waited for may have succeeded (or just failed).
        let now = Instant::now();
        let valid = match self.cached(now) {
            Cached::Fresh(v) => return Ok(v),
            Cached::Valid(v) => Some(v),
            Cached::None => None,
        };
        if let Some((until, why)) = &self.lock().failed
            && now < *until
        {
            return valid.ok_or_else(|| why.clone());
        }
        let mut attempt = 0;
        let result = loop {
            match fetch().await {
                Ok(f) => break Ok(f),
                Err(FetchError::Transient(r)) if attempt < RETRY_DELAYS.len() => {
                    tracing::debug!(reason = %r, attempt = attempt + 1, "token fetch failed; retrying");
                    tokio::time::sleep(RETRY_DELAYS[attempt]).await;
                    attempt += 1;
                }
                Err(e) => break Err(e),
            }
        };
        let now = Instant::now();
        let mut state = self.lock();
        match result {
            Ok(f) => {
                // A lifetime shorter than the margin: refresh half way instead
                // of on every request.
                let ahead = if f.expires_in > refresh_before {
                    f.expires_in - refresh_before
                } else {
                    f.expires_in / 2
                };
                state.token = Some(Token {
                    bearer: f.bearer.clone(),
                    refresh_at: now + ahead,
                    expires_at: now + f.expires_in,
                });
                state.failed = None;
                Ok(f.bearer)
            }
            Err(e) => {
                let why = format!("the token endpoint failed: {}", e.reason());
                state.failed = Some((now + FAILURE_HOLD, why.clone()));
                valid.ok_or(why)
            }
        }
    }
}

type TokenClient = Client<Connector, Full<Bytes>>;

/// One OAuth key: its token request, the client that sends it, and the cache.
struct TokenSource {
    spec: Arc<OAuth2Spec>,
    cache: Arc<TokenCache>,
}

/// Every OAuth key of one configuration.
pub struct Tokens {
    client: TokenClient,
    sources: HashMap<(Arc<str>, Arc<str>), TokenSource>,
}

impl Tokens {
    /// Builds the token sources for `policy`. A key whose token request is
    /// unchanged from `prev` keeps its cached token across the reload.
    pub fn new(policy: &Policy, connector: Connector, prev: Option<&Tokens>) -> Tokens {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let mut sources = HashMap::new();
        for (api, creds) in policy.all_credentials() {
            for key in creds.keys() {
                let Some(spec) = key.oauth2() else { continue };
                let id = (api.clone(), key.name.clone());
                let cache = prev
                    .and_then(|p| p.sources.get(&id))
                    .filter(|s| *s.spec == **spec)
                    .map_or_else(Arc::default, |s| s.cache.clone());
                sources.insert(
                    id,
                    TokenSource {
                        spec: spec.clone(),
                        cache,
                    },
                );
            }
        }
        Tokens { client, sources }
    }

    /// `Bearer <token>` for key `key` of `api`, or 503 `credential_unavailable`.
    pub async fn bearer(
        &self,
        metrics: &Metrics,
        api: &str,
        key: &str,
    ) -> Result<HeaderValue, GatewayError> {
        let id: (Arc<str>, Arc<str>) = (Arc::from(api), Arc::from(key));
        let Some(src) = self.sources.get(&id) else {
            return Err(GatewayError::new(
                ErrorCode::Internal,
                "no token source for an OAuth credential",
            ));
        };
        let spec = &src.spec;
        let fetch = || async {
            let r = fetch_token(&self.client, spec).await;
            metrics.credential_token_fetch(api, key, r.is_ok());
            if let Err(e) = &r {
                tracing::warn!(
                    api = %api, credential.key = %key, oauth.client_id = %spec.client_id,
                    oauth.token_url = %spec.token_url, reason = %e.reason(),
                    "OAuth token request failed"
                );
            }
            r
        };
        src.cache
            .get(spec.refresh_before, fetch)
            .await
            .map_err(|why| {
                GatewayError::new(
                    ErrorCode::CredentialUnavailable,
                    format!("no access token for API {api:?} (key {key:?}): {why}"),
                )
            })
    }
}

/// One token request (RFC 6749 §4.4.2) and its response (§5.1), all
/// within `spec.timeout`.
async fn fetch_token(client: &TokenClient, spec: &OAuth2Spec) -> Result<Fetched, FetchError> {
    tokio::time::timeout(spec.timeout, fetch_token_once(client, spec))
        .await
        .unwrap_or_else(|_| Err(FetchError::Transient("timed out".to_owned())))
}

async fn fetch_token_once(client: &TokenClient, spec: &OAuth2Spec) -> Result<Fetched, FetchError> {
    let mut req = Request::new(Full::new(Bytes::from(spec.form_body().to_owned())));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = spec.token_url.clone();
    let h = req.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(a) = spec.authorization() {
        h.insert(AUTHORIZATION, a.clone());
    }
    let resp = match client.request(req).await {
        Err(e) => {
            return Err(match crate::respond::connect_error_in(&e) {
                Some(crate::upstream::ConnectError::Resolve(
                    crate::dns::ResolveError::Blocked(_),
                )) => FetchError::Permanent("blocked by the network guard".to_owned()),
                Some(ce) => FetchError::Transient(ce.to_string()),
                None => FetchError::Transient("request failed".to_owned()),
            });
        }
        Ok(r) => r,
    };
    let status = resp.status();
    let body = match Limited::new(resp.into_body(), MAX_RESPONSE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(FetchError::Transient(format!(
                "status {status}, body unreadable"
            )));
        }
    };
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(FetchError::Transient(format!("status {}", status.as_u16())));
    }
    if !status.is_success() {
        // The body's `error` code (e.g. invalid_client) is safe and useful;
        // the rest may echo what we sent.
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(String::new, |c| format!(" ({c})"));
        return Err(FetchError::Permanent(format!(
            "status {}{code}",
            status.as_u16()
        )));
    }
    parse_token(&body)
}

/// Reads `access_token`, `token_type` and `expires_in` from a token response.
pub fn parse_token(body: &[u8]) -> Result<Fetched, FetchError> {
    let bad = |m: &str| FetchError::Permanent(format!("invalid token response: {m}"));
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?;
    if let Some(tt) = v.get("token_type").and_then(|t| t.as_str())
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(bad("token_type is not Bearer"));
    }
    let expires_in = match v.get("expires_in") {
        None | Some(serde_json::Value::Null) => DEFAULT_EXPIRES_IN,
        Some(serde_json::Value::Number(n)) => {
            Duration::from_secs(n.as_u64().ok_or_else(|| bad("expires_in"))?)
        }
        // Some servers send it as a string.
        Some(serde_json::Value::String(s)) => {
            Duration::from_secs(s.parse().map_err(|_| bad("expires_in"))?)
        }
        Some(_) => return Err(bad("expires_in")),
    };
    let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| bad("access_token has characters not allowed in a header"))?;
    bearer.set_sensitive(true);
    Ok(Fetched { bearer, expires_in })
}

#[cfg(test)]
#[path = "oauth_tests.rs"]
mod tests;
