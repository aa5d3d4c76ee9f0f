//! Fetches the JWKS of every `auth.jwt` issuer (docs/auth.md) in the
//! background, through the same guarded connector as upstream traffic (a JWKS
//! on a loopback or private address needs a `network_guard.allow` entry).
//!
//! One task per issuer and configuration: it fetches at start, then every
//! `refresh`, and early when a request presented an unknown `kid` (at most
//! once per `min_refetch_interval`). A failed fetch keeps the previous keys
//! and retries with back-off (1 s doubling, capped at `refresh`). The task
//! holds only a weak reference between rounds and ends once a reload has
//! dropped its configuration. A request never waits for a fetch longer than
//! [`WAIT`]: it is then judged with the keys there are (unknown `kid`: 401).

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tollgate_policy::{Jwks, Policy};
use tollgate_telemetry::Metrics;

use crate::upstream::Connector;

/// Longest a request waits for a refetch caused by its unknown `kid`.
pub const WAIT: Duration = Duration::from_secs(2);
/// Bound on one fetch (connect, headers and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const MAX_BODY: usize = 256 * 1024;

type JwksClient = Client<Connector, Empty<Bytes>>;

/// Starts the fetch tasks for `policy`'s issuers; key sets of the same URL in
/// `prev` are taken over first, so a reload refuses no token meanwhile.
/// Without a Tokio runtime (`tollgate validate`) nothing is started. Each
/// fetch is counted in `tollgate_jwks_fetches_total{issuer,result}` and
/// `tollgate_jwks_keys{issuer}` (labelled by the issuer's `name`, never its URL).
pub fn start(
    policy: &Policy,
    connector: Connector,
    prev: Option<&Policy>,
    metrics: Option<&Arc<Metrics>>,
) {
    let mut sets = policy.jwks().peekable();
    if sets.peek().is_none() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let client: JwksClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector);
    for set in sets {
        if let Some(old) = prev.and_then(|p| p.jwks().find(|o| o.url == set.url)) {
            set.adopt(old);
        }
        rt.spawn(run(Arc::downgrade(set), client.clone(), metrics.cloned()));
    }
}

/// Before evaluating a route request: when its JWT's `kid` is unknown, asks
/// for a refetch and waits up to [`WAIT`] for new keys. When the rate limit
/// (`min_refetch_interval`) would delay that refetch beyond [`WAIT`], it does
/// not wait at all: the token is judged with the keys there are.
pub async fn await_unknown_kid(policy: &Policy, headers: &HeaderMap) {
    let Some(set) = policy.jwt_missing_key(headers) else {
        return;
    };
    if set.refetch_in() >= WAIT {
        return;
    }
    let changed = set.changed.notified();
    set.wanted.notify_one();
    let _ = tokio::time::timeout(WAIT, changed).await;
}

async fn run(weak: Weak<Jwks>, client: JwksClient, metrics: Option<Arc<Metrics>>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(set) = weak.upgrade() else {
            return;
        };
        let next = match fetch(&client, &set.url).await.and_then(|b| set.load(&b)) {
            Ok(keys) => {
                tracing::info!(issuer = %set.name, keys, "JWKS loaded");
                if let Some(m) = &metrics {
                    m.jwks_fetched(&set.name, keys);
                }
                backoff = Duration::from_secs(1);
                set.refresh
            }
            Err(error) => {
                set.mark_fetch();
                if let Some(m) = &metrics {
                    m.jwks_fetch_failed(&set.name);
                }
                // Requests waiting for this fetch need not wait any longer.
                set.changed.notify_waiters();
                tracing::warn!(issuer = %set.name, %error, "JWKS fetch failed; keeping the previous keys");
                let wait = backoff;
                backoff = (backoff * 2).min(set.refresh);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = set.wanted.notified() => {
                // Rate limit: an unknown kid refetches at most once per interval.
                tokio::time::sleep(set.refetch_in()).await;
            }
        }
        drop(set);
    }
}

async fn fetch(client: &JwksClient, url: &str) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|_| "invalid jwks_url".to_owned())?;
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = uri;
    req.headers_mut().insert(
        ACCEPT,
        HeaderValue::from_static("application/jwk-set+json, application/json"),
    );
    let once = async {
        let resp =
            client
                .request(req)
                .await
                .map_err(|e| match crate::respond::connect_error_in(&e) {
                    Some(ce) => ce.to_string(),
                    None => "request failed".to_owned(),
                })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| format!("status {status}, body unreadable or over 256 KiB"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("status {}", status.as_u16()));
        }
        Ok(body.to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, once)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}
