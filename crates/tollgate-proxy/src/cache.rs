//! The response cache: a shared HTTP cache (RFC 9111) for `GET` and `HEAD`
//! requests of APIs with `cache`. The RFC decisions (storable? fresh? `Age`,
//! which stored response a 304 updates) come from the `http-cache-semantics`
//! crate in shared-cache mode; this module adds keys, `Vary` variants, request
//! collapsing, `stale-while-revalidate` / `stale-if-error`, the opt-in `ttl`,
//! and the memory bound (cache_store.rs).
//!
//! Where it runs: the lookup is in `handle` after access and policy and before
//! the breaker, back-off and admission, so a hit consumes no rate-limit quota
//! and never reaches the upstream. A miss is forwarded as usual and its
//! response body is teed while it streams to the client (never buffered before
//! sending); a body longer than `max_entry` is not stored.
//!
//! What a client sees: every response of a cached API carries `Cache-Status`
//! (RFC 9211), e.g. `tollgate; hit`, `tollgate; fwd=miss; stored`,
//! `tollgate; fwd=stale; fwd-status=304` (revalidated, answered 200 from
//! memory) or `tollgate; hit; detail=stale` (served stale). Hits carry `Age`.
//! The cache never refuses a request; gateway errors carry no `Cache-Status`.
//!
//! Range requests: a stored full `200` answers `Range: bytes=…` with 206 or 416
//! (cache_range.rs); an upstream's `206` is passed through and never stored.
//!
//! Isolation: the consumer is part of the key unless `shared_across_consumers`;
//! `private`, `no-store` and responses to requests with the caller's own
//! `Authorization` (unless `public` / `s-maxage` / `must-revalidate`) are never
//! stored. Credentials Tollgate injects are not part of the request the RFC
//! rules see (the caller never sent them).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, ETAG, EXPIRES, HOST, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use tollgate_config::{ApiCache, CacheKeyPart};

use crate::body::ProxyBody;
use crate::cache_store::{Flight, Store};
use crate::observe::Completion;
use crate::state::X_REQUEST_ID;

pub use crate::cache_store::Store as ResponseCache;

/// `Cache-Status` (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// How long a request waits for a concurrent identical miss to finish before
/// going upstream itself.
const COLLAPSE_WAIT: Duration = Duration::from_secs(30);

/// One stored response (one `Vary` variant of a key).
pub struct Entry {
    pub(crate) policy: CachePolicy,
    status: StatusCode,
    /// The response headers as stored (without `Age`; `Cache-Control` from `ttl` not included).
    headers: HeaderMap,
    pub(crate) body: Bytes,
    /// `Cache-Control: max-age` came from `ttl`: clients do not see it.
    synthetic: bool,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    /// `must-revalidate`, `proxy-revalidate` or `no-cache`: never served stale.
    no_stale: bool,
    /// When the response stops being fresh.
    stale_at: SystemTime,
    /// The request headers `Vary` selects, as `name=value` lines: the variant's identity.
    vary_key: String,
}

impl Entry {
    fn new(
        policy: CachePolicy,
        req: &http::request::Parts,
        parts: &http::response::Parts,
        synthetic: bool,
        now: SystemTime,
    ) -> Entry {
        let mut headers = parts.headers.clone();
        headers.remove(http::header::AGE);
        if synthetic {
            headers.remove(CACHE_CONTROL);
        }
        let cc = directives(parts.headers.get_all(CACHE_CONTROL));
        let secs = |name: &str| {
            cc.iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.as_deref()?.parse::<u64>().ok())
                .map_or(Duration::ZERO, Duration::from_secs)
        };
        let no_stale = cc.iter().any(|(k, _)| {
            matches!(
                k.as_str(),
                "must-revalidate" | "proxy-revalidate" | "no-cache"
            )
        });
        let mut names: Vec<String> = parts
            .headers
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        let mut vary_key = String::new();
        for n in names {
            vary_key.push_str(&n);
            vary_key.push('=');
            for v in req.headers.get_all(n.as_str()) {
                vary_key.push_str(&String::from_utf8_lossy(v.as_bytes()));
                vary_key.push('\u{0}');
            }
            vary_key.push('\n');
        }
        Entry {
            stale_while_revalidate: secs("stale-while-revalidate"),
            stale_if_error: secs("stale-if-error"),
            no_stale,
            stale_at: now + policy.time_to_live(now),
            policy,
            status: parts.status,
            headers,
            body: Bytes::new(),
            synthetic,
            vary_key,
        }
    }

    /// Bytes this entry holds, for the memory bound.
    pub(crate) fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        self.body.len() as u64 + headers as u64 * 2 + self.vary_key.len() as u64 + 256
    }

    /// Both answer the same `Vary`-selected request headers (a new one replaces the old).
    pub(crate) fn same_variant(&self, other: &Entry) -> bool {
        self.vary_key == other.vary_key
    }

    fn staleness(&self, now: SystemTime) -> Option<Duration> {
        now.duration_since(self.stale_at).ok()
    }

    /// May be served stale `now` within `window` (`stale-while-revalidate` / `stale-if-error`).
    fn stale_within(&self, window: Duration, now: SystemTime) -> bool {
        !self.no_stale && !window.is_zero() && self.staleness(now).is_some_and(|s| s <= window)
    }

    fn has_validators(&self) -> bool {
        self.headers.contains_key(ETAG) || self.headers.contains_key(LAST_MODIFIED)
    }

    /// The response as served `now`: stored headers with `Age` and `Date`.
    fn served(&self, now: SystemTime) -> http::response::Parts {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = self.status;
        parts.headers = self.headers.clone();
        parts.headers.insert(
            http::header::AGE,
            HeaderValue::from(self.policy.age(now).as_secs()),
        );
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
            parts.headers.insert(http::header::DATE, v);
        }
        parts
    }
}

/// Parsed `Cache-Control` directives (lower-case names, unquoted values).
fn directives<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> Vec<(String, Option<String>)> {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            let (k, v) = match d.split_once('=') {
                Some((k, v)) => (k, Some(v.trim().trim_matches('"').to_owned())),
                None => (d, None),
            };
            Some((k.trim().to_ascii_lowercase(), v))
        })
        .collect()
}

fn options() -> CacheOptions {
    CacheOptions {
        shared: true,
        ..CacheOptions::default()
    }
}

/// What `handle` knows about a request of a cached API.
pub struct Lookup<'a> {
    pub api: &'a Arc<str>,
    pub cfg: &'a ApiCache,
    pub consumer: Option<&'a str>,
    pub method: &'a Method,
    /// The upstream URL (`https://host[:port]/path?query`).
    pub url: String,
    /// The target's authority (the `Host` the upstream sees).
    pub authority: &'a str,
    /// The client's request headers (hop-by-hop ones are ignored).
    pub headers: &'a HeaderMap,
    /// The route caller's Tollgate key travels in `Authorization` and is removed.
    pub strip_authorization: bool,
    /// The API has several credential keys (the default key then has `credential`).
    pub several_keys: bool,
    /// The credential key the request would use (for the `credential` key part).
    pub credential: Option<Arc<str>>,
}

/// The outcome of a lookup.
pub enum Begin {
    /// Answer from memory; nothing goes upstream.
    Hit(Hit),
    /// Forward the request; the plan travels with it.
    Forward(Box<Plan>),
    /// Answer stale from memory (`stale-while-revalidate`) and forward the request in the
    /// background to refresh the entry.
    Refresh(Hit, Box<Plan>),
}

/// A response answered from the cache.
pub struct Hit {
    parts: http::response::Parts,
    body: Bytes,
    /// `Cache-Status` value.
    status: &'static str,
    /// Metrics / access-log result.
    result: &'static str,
}

/// A forwarded request of a cached API.
pub struct Plan {
    store: Arc<Store>,
    api: Arc<str>,
    key: Arc<str>,
    url: Arc<str>,
    /// The request as the RFC rules see it.
    req: http::request::Parts,
    max_entry: u64,
    ttl: Option<Duration>,
    /// A stored response that matched but is stale: revalidated, or served on error.
    stale: Option<Arc<Entry>>,
    /// This request leads the single flight for its key (dropped when done).
    flight: Option<Flight>,
    /// Not cacheable at all (method, `no-store` request): only `Cache-Status` is added.
    bypass: bool,
    /// The client sent its own validators: a 304 it asked for is passed through.
    client_conditional: bool,
    /// `shared_across_consumers`: responses setting cookies are then not stored.
    shared: bool,
    /// The credential key this plan's key was built with (`credential` key part); the
    /// forward prefers it, and nothing is stored when another key was used.
    credential: Option<Arc<str>>,
}

impl Store {
    /// Looks the request up: a fresh hit, a stale one within `stale-while-revalidate`
    /// (refreshed by this request in the background), or a plan for forwarding. Concurrent
    /// misses of one key wait for the first (single flight).
    pub async fn begin(self: &Arc<Self>, l: Lookup<'_>) -> Begin {
        let req = view(&l);
        let mut plan = Plan {
            store: self.clone(),
            api: l.api.clone(),
            key: key(&l).into(),
            url: l.url.as_str().into(),
            req,
            max_entry: l.cfg.max_entry.get(),
            ttl: l.cfg.ttl.map(|d| d.0),
            stale: None,
            flight: None,
            bypass: false,
            client_conditional: l.headers.contains_key(IF_NONE_MATCH)
                || l.headers.contains_key(IF_MODIFIED_SINCE),
            shared: l.cfg.shared_across_consumers,
            credential: None,
        };
        if l.cfg
            .key_parts(l.several_keys)
            .contains(&CacheKeyPart::Credential)
        {
            plan.credential = l.credential.clone();
        }
        let request_no_store = directives(l.headers.get_all(CACHE_CONTROL))
            .iter()
            .any(|(k, _)| k == "no-store");
        if !matches!(*l.method, Method::GET | Method::HEAD) || request_no_store {
            plan.bypass = true;
            return Begin::Forward(Box::new(plan));
        }
        let mut waited = false;
        loop {
            let now = SystemTime::now();
            let mut stale = None;
            for e in self.variants(&plan.key) {
                match e.policy.before_request(&plan.req, now) {
                    BeforeRequest::Fresh(_) => {
                        return Begin::Hit(Hit::from_entry(
                            &plan.req,
                            &e,
                            e.served(now),
                            "tollgate; hit",
                            "hit",
                        ));
                    }
                    BeforeRequest::Stale { matches: true, .. } if stale.is_none() => {
                        stale = Some(e);
                    }
                    BeforeRequest::Stale { .. } => {}
                }
            }
            let no_cache = directives(plan.req.headers.get_all(CACHE_CONTROL))
                .iter()
                .any(|(k, _)| k == "no-cache");
            if let Some(e) = &stale
                && !no_cache
                && e.stale_within(e.stale_while_revalidate, now)
            {
                // Serve stale now; the caller forwards this request to refresh the entry
                // (one refresh per key: only the flight leader does it).
                if let Some(flight) = self.lead(&plan.key) {
                    plan.flight = Some(flight);
                    plan.stale = stale.clone();
                    let hit = Hit::from_entry(
                        &plan.req,
                        e,
                        e.served(now),
                        "tollgate; hit; detail=stale",
                        "stale",
                    );
                    return Begin::Refresh(hit, Box::new(plan));
                }
                return Begin::Hit(Hit::from_entry(
                    &plan.req,
                    e,
                    e.served(now),
                    "tollgate; hit; detail=stale",
                    "stale",
                ));
            }
            plan.stale = stale;
            if waited {
                return Begin::Forward(Box::new(plan));
            }
            match self.lead_or_wait(&plan.key) {
                Ok(flight) => {
                    plan.flight = Some(flight);
                    return Begin::Forward(Box::new(plan));
                }
                Err(mut rx) => {
                    // Another request is fetching this key: wait for it to finish (its
                    // response stored or given up), then look again.
                    let _ = tokio::time::timeout(COLLAPSE_WAIT, rx.changed()).await;
                    waited = true;
                }
            }
        }
    }
}

/// The request as the RFC rules see it: the upstream URL, the client's headers
/// minus hop-by-hop ones and the route caller's Tollgate key, `Host` = the target.
fn view(l: &Lookup<'_>) -> http::request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = l.method.clone();
    parts.uri = l.url.parse::<Uri>().unwrap_or_default();
    let mut headers = l.headers.clone();
    crate::hop::strip_hop_by_hop(&mut headers);
    if l.strip_authorization {
        headers.remove(AUTHORIZATION);
    }
    if let Ok(v) = HeaderValue::from_str(l.authority) {
        headers.insert(HOST, v);
    }
    parts.headers = headers;
    parts
}

/// The primary key: API, then the configured parts (consumer forced unless shared).
fn key(l: &Lookup<'_>) -> String {
    let mut k = String::with_capacity(l.url.len() + 64);
    let mut push = |s: &str| {
        k.push_str(s);
        k.push('\u{0}');
    };
    push(l.api);
    let mut consumer = !l.cfg.shared_across_consumers;
    for part in l.cfg.key_parts(l.several_keys) {
        match part {
            CacheKeyPart::Method => push(l.method.as_str()),
            CacheKeyPart::Url => push(&l.url),
            CacheKeyPart::Consumer => consumer = true,
            CacheKeyPart::Credential => {
                push("credential");
                push(l.credential.as_deref().unwrap_or(""));
            }
            CacheKeyPart::Headers(names) => {
                for n in names {
                    push(n);
                    match l.headers.get(n.as_str()) {
                        Some(v) => push(&String::from_utf8_lossy(v.as_bytes())),
                        None => push("\u{1}"),
                    }
                }
            }
        }
    }
    if consumer {
        push("consumer");
        push(l.consumer.unwrap_or(""));
    }
    k
}

impl Hit {
    /// The stored response `e` as the answer to `req`: a `Range` request gets its part
    /// (206) or 416 (cache_range.rs).
    fn from_entry(
        req: &http::request::Parts,
        e: &Entry,
        mut parts: http::response::Parts,
        status: &'static str,
        result: &'static str,
    ) -> Hit {
        if e.synthetic {
            parts.headers.remove(CACHE_CONTROL);
        }
        let (code, body) = crate::cache_range::apply(
            &req.method,
            &req.headers,
            e.status,
            &mut parts.headers,
            e.body.clone(),
        );
        parts.status = code;
        Hit {
            parts,
            body,
            status,
            result,
        }
    }

    /// The metrics / access-log result of this hit.
    pub fn result(&self) -> &'static str {
        self.result
    }
}

/// Answers `hit` (no body for `HEAD`) and finishes the request's log line.
pub fn serve(mut done: Completion, hit: Hit, head: bool) -> Response<ProxyBody> {
    let Hit {
        mut parts,
        body,
        status,
        result,
    } = hit;
    parts.version = http::Version::HTTP_11;
    parts.headers.remove(&X_REQUEST_ID);
    if let Ok(v) = HeaderValue::from_str(&done.request_id) {
        parts.headers.insert(X_REQUEST_ID.clone(), v);
    }
    parts
        .headers
        .insert(CACHE_STATUS.clone(), HeaderValue::from_static(status));
    if !parts.headers.contains_key(CONTENT_LENGTH) {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let api = done.api.as_deref().unwrap_or("");
    done.gateway.metrics.cache_lookup(api, result);
    done.cache = Some(result);
    done.status = parts.status.as_u16();
    let mut body = if head {
        ProxyBody::empty()
    } else {
        ProxyBody::full(body)
    };
    body.on_complete(done);
    Response::from_parts(parts, body)
}

/// What `forward` does with the upstream's response.
pub enum After {
    /// Answer from the cache instead (revalidated by a 304, or stale on error).
    Serve(Hit),
    /// Pass the upstream's response on; tee its body when it may be stored.
    Pass {
        tee: Option<Box<Tee>>,
        status: HeaderValue,
        result: &'static str,
    },
}

impl Plan {
    /// The credential key the cache key was built with, for the forward to prefer.
    pub fn credential(&self) -> Option<&str> {
        self.credential.as_deref()
    }

    /// The key the forward actually injected: when it is not the one the cache key was built
    /// with (that key was in back-off or at its limit), the response is not stored.
    pub fn credential_used(&mut self, used: Option<&str>) {
        if self.credential.is_some() && self.credential.as_deref() != used {
            self.bypass = true;
            self.flight = None;
            // Not revalidated either: a 304 would answer for another key's response.
            self.stale = None;
        }
    }

    /// Adds the stored response's validators to the upstream request when it is
    /// being revalidated (unless the client sent its own).
    pub fn add_validators(&self, headers: &mut HeaderMap) {
        let Some(e) = &self.stale else { return };
        if self.client_conditional {
            return;
        }
        let h = &e.headers;
        if let Some(v) = h.get(ETAG) {
            headers.insert(IF_NONE_MATCH, v.clone());
        }
        if let Some(v) = h.get(LAST_MODIFIED) {
            headers.insert(IF_MODIFIED_SINCE, v.clone());
        }
    }

    /// The upstream could not be reached (or answered 5xx): a stale entry within
    /// `stale-if-error` is served instead.
    pub fn on_error(&self) -> Option<Hit> {
        let now = SystemTime::now();
        let e = self.stale.as_ref()?;
        e.stale_within(e.stale_if_error, now).then(|| {
            Hit::from_entry(
                &self.req,
                e,
                e.served(now),
                "tollgate; hit; detail=stale",
                "stale",
            )
        })
    }

    /// Decides on the upstream's response (headers after hop-by-hop removal and
    /// response header rules).
    pub fn on_response(mut self, parts: &http::response::Parts, head: bool) -> After {
        let now = SystemTime::now();
        if self.bypass {
            // A successful unsafe request invalidates what is stored for its URL (RFC 9111 §4.4).
            let safe = matches!(
                self.req.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
            );
            if !safe && (parts.status.is_success() || parts.status.is_redirection()) {
                self.store.purge(&self.api, Some(&self.url));
            }
            return self.pass("tollgate; fwd=bypass", "bypass");
        }
        let revalidating = self.stale.is_some();
        if parts.status.is_server_error()
            && let Some(hit) = self.on_error()
        {
            return After::Serve(hit);
        }
        if parts.status == StatusCode::NOT_MODIFIED
            && let Some(old) = self.stale.clone()
        {
            if let AfterResponse::NotModified(policy, merged) =
                old.policy.after_response(&self.req, parts, now)
            {
                let mut entry = Entry::new(policy, &self.req, &merged, old.synthetic, now);
                entry.body = old.body.clone();
                let entry = Arc::new(entry);
                let served = entry.served(now);
                self.store
                    .insert(&self.key, &self.api, &self.url, entry.clone());
                if !self.client_conditional {
                    return After::Serve(Hit::from_entry(
                        &self.req,
                        &entry,
                        served,
                        "tollgate; fwd=stale; fwd-status=304",
                        "revalidated",
                    ));
                }
            }
            return self.pass("tollgate; fwd=stale; fwd-status=304", "revalidated");
        }
        let fwd = if revalidating { "stale" } else { "miss" };
        let result = "miss";
        // The opt-in `ttl`: freshness for a response that says nothing about caching.
        let mut synthetic = false;
        let mut policy_parts = None;
        if let Some(ttl) = self.ttl
            && !parts.headers.contains_key(CACHE_CONTROL)
            && !parts.headers.contains_key(EXPIRES)
        {
            let mut p = http::Response::new(());
            *p.status_mut() = parts.status;
            *p.headers_mut() = parts.headers.clone();
            p.headers_mut().insert(
                CACHE_CONTROL,
                HeaderValue::from_str(&format!("max-age={}", ttl.as_secs().max(1)))
                    .unwrap_or(HeaderValue::from_static("max-age=1")),
            );
            policy_parts = Some(p.into_parts().0);
            synthetic = true;
        }
        let policy = CachePolicy::new_options(
            &self.req,
            policy_parts.as_ref().unwrap_or(parts),
            now,
            options(),
        );
        let vary_star = parts
            .headers
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|s| s.trim() == "*"));
        let length = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let entry_probe = Entry::new(policy, &self.req, parts, synthetic, now);
        let worth =
            entry_probe.policy.time_to_live(now) > Duration::ZERO || entry_probe.has_validators();
        // A cookie set for one consumer must not reach another.
        let cookie = self.shared && parts.headers.contains_key(http::header::SET_COOKIE);
        // A partial response is never stored as if it were the whole one.
        let storable = entry_probe.policy.is_storable()
            && parts.status != StatusCode::PARTIAL_CONTENT
            && worth
            && !cookie
            && !vary_star
            && length.is_none_or(|n| n <= self.max_entry);
        let (status, tee) = if !storable {
            (format!("tollgate; fwd={fwd}"), None)
        } else {
            let known = if head { Some(0) } else { length };
            let status = match known {
                Some(_) => format!("tollgate; fwd={fwd}; stored"),
                None => format!("tollgate; fwd={fwd}"),
            };
            let tee = Tee {
                store: self.store.clone(),
                key: self.key.clone(),
                api: self.api.clone(),
                url: self.url.clone(),
                entry: Some(entry_probe),
                chunks: Vec::new(),
                len: 0,
                max: self.max_entry,
                flight: self.flight.take(),
            };
            (status, Some(Box::new(tee)))
        };
        After::Pass {
            tee,
            status: HeaderValue::from_str(&status)
                .unwrap_or(HeaderValue::from_static("tollgate; fwd=miss")),
            result,
        }
    }

    fn pass(self, status: &'static str, result: &'static str) -> After {
        After::Pass {
            tee: None,
            status: HeaderValue::from_static(status),
            result,
        }
    }

    /// Metrics / access-log result when the request ends without a usable response.
    pub fn failed_result(&self) -> &'static str {
        if self.bypass { "bypass" } else { "miss" }
    }

    /// The `Cache-Status` of a request that failed upstream (no stale entry to serve).
    pub fn failed_status(&self) -> HeaderValue {
        HeaderValue::from_static(if self.bypass {
            "tollgate; fwd=bypass"
        } else {
            "tollgate; fwd=miss"
        })
    }
}

/// Copies a response body while it streams to the client; stores it when it
/// ended within `max_entry`, gives up (and releases waiting requests) otherwise.
pub struct Tee {
    store: Arc<Store>,
    key: Arc<str>,
    api: Arc<str>,
    url: Arc<str>,
    /// `None` once stored or abandoned.
    entry: Option<Entry>,
    chunks: Vec<Bytes>,
    len: u64,
    max: u64,
    flight: Option<Flight>,
}

impl Tee {
    /// A data frame passed to the client.
    pub fn data(&mut self, d: &Bytes) {
        if self.entry.is_none() {
            return;
        }
        self.len += d.len() as u64;
        if self.len > self.max {
            self.abandon();
            return;
        }
        self.chunks.push(d.clone());
    }

    /// The response headers after data-loss protection: a body it rewrote (another
    /// `Content-Length` or `Content-Encoding`) is not stored, since the stored headers
    /// describe the upstream's body.
    pub fn check_rewrite(&mut self, headers: &HeaderMap) {
        let Some(e) = &self.entry else { return };
        let same = |name: &HeaderName| e.headers.get(name) == headers.get(name);
        if !same(&CONTENT_LENGTH) || !same(&http::header::CONTENT_ENCODING) {
            self.abandon();
        }
    }

    /// The body failed or was cut: nothing is stored.
    pub fn abandon(&mut self) {
        self.entry = None;
        self.chunks = Vec::new();
        self.flight = None;
    }

    /// The body ended completely: store it.
    pub fn finish(&mut self) {
        if let Some(mut e) = self.entry.take() {
            let mut body = bytes::BytesMut::with_capacity(self.len as usize);
            for c in self.chunks.drain(..) {
                body.extend_from_slice(&c);
            }
            e.body = body.freeze();
            self.store
                .insert(&self.key, &self.api, &self.url, Arc::new(e));
        }
        self.flight = None;
    }
}

/// The lookup for an allowed request: `None` when its API has no (enabled) cache.
pub async fn lookup(
    gw: &Arc<crate::state::Gateway>,
    active: &crate::state::Active,
    eval: &tollgate_policy::Evaluation,
    parts: &http::request::Parts,
) -> Option<Begin> {
    let api = eval.api.as_ref()?;
    let target = eval.target.as_ref()?;
    let cfg = active
        .policy
        .matched_api(eval)?
        .cache
        .as_ref()
        .filter(|c| c.enabled)?;
    let authority = crate::handler::authority(target);
    let url = format!(
        "{}://{}{}",
        target.scheme.as_str(),
        authority,
        target.path_and_query
    );
    let creds = active.policy.credentials(api);
    let several_keys = creds.is_some_and(|c| c.keys().len() > 1);
    // Only looked up when the key has `credential` (the default with several keys).
    let creds = creds.filter(|_| {
        cfg.key_parts(several_keys)
            .contains(&CacheKeyPart::Credential)
    });
    let l = Lookup {
        api,
        cfg,
        consumer: eval.consumer.as_deref(),
        method: &parts.method,
        url,
        authority: &authority,
        headers: &parts.headers,
        strip_authorization: eval.strip_authorization,
        several_keys,
        credential: creds.map(|c| c.peek().name.clone()),
    };
    Some(gw.cache.begin(l).await)
}

/// A log line of its own for the background refresh of a stale entry
/// (`stale-while-revalidate`): same request identity, request id suffixed `-refresh`.
pub fn detached(d: &Completion) -> Completion {
    Completion {
        gateway: d.gateway.clone(),
        active: d.active.clone(),
        start: std::time::Instant::now(),
        time: SystemTime::now(),
        request_id: format!("{}-refresh", d.request_id),
        kind: d.kind,
        peer: d.peer,
        consumer: d.consumer.clone(),
        api: d.api.clone(),
        method: d.method.clone(),
        scheme: d.scheme,
        host: d.host.clone(),
        path: d.path.clone(),
        status: 0,
        decision: d.decision,
        reason: None,
        bytes_in: crate::observe::BytesIn::Fixed(0),
        upstream_duration: None,
        upstream_addr: None,
        attempts: 0,
        credential: None,
        trace: None,
        concurrency: None,
        dlp: None,
        provider_limits: None,
        cache: None,
    }
}

/// Reads a background refresh's response to its end, so its tee stores it.
pub async fn drain(resp: Response<ProxyBody>) {
    use http_body_util::BodyExt as _;
    let _ = resp.into_body().collect().await;
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
