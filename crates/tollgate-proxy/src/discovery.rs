//! API discovery: records every endpoint traffic reaches, managed by an API or
//! not, so operators can see what their workloads call and start a policy from
//! it (`GET /admin/discovery`, `tollgate discover [--suggest]`).
//!
//! An endpoint is (host, method, path pattern). The pattern is the request path
//! normalised by [`normalize_path`] (ids, UUIDs, hex and opaque tokens, emails
//! become `{id}`; the query is dropped). CONNECT tunnels are host-level entries
//! (method `CONNECT`, empty pattern). Per endpoint: request count, denials,
//! status-class counts, a fixed-bucket latency histogram (total time, request
//! start to response-body end), up to [`MAX_CONSUMERS`] consumer names, first
//! and last seen, and the provider's rate-limit headers last seen (with the
//! largest limit and reset seen, for suggesting a limit).
//!
//! Bounds: at most `discovery.max_hosts` hosts and `max_endpoints_per_host`
//! endpoints per host; a request beyond them is counted in an overflow bucket
//! (per host for endpoints, global for hosts) and in
//! `tollgate_discovery_overflow_total`. Nothing a client sees depends on this
//! module: it only observes, after the response is complete.
//!
//! Cost on the hot path: no await; the key is built in a thread-local buffer,
//! then one lookup under one of [`SHARDS`] mutexes chosen by host. A repeat
//! endpoint allocates nothing (a consumer name is an `Arc` clone).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde_json::{Value, json};
use tollgate_config::Discovery as DiscoveryConfig;
use tollgate_policy::TrafficKind;
use tollgate_telemetry::Metrics;

/// Mutex shards (by host hash): enough that two cores rarely contend.
const SHARDS: usize = 16;
/// Consumer names kept per endpoint; more are flagged `consumers_truncated`.
pub const MAX_CONSUMERS: usize = 16;
/// Path segments kept in a pattern; deeper paths end in `/**`.
pub const MAX_SEGMENTS: usize = 16;
/// A segment longer than this is always an id (and keeps patterns small).
pub const MAX_SEGMENT_LEN: usize = 64;
/// Latency bucket upper bounds in milliseconds; the last bucket is everything above.
const LATENCY_BUCKETS_MS: [u64; 13] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// The provider's rate-limit headers on one upstream response. Parsed with the
/// provider back-off's parsers (`backoff.rs`), so both read the same forms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderLimits {
    /// `x-ratelimit-limit`, `x-ratelimit-limit-requests` or `ratelimit-limit`.
    pub limit: Option<u64>,
    /// `x-ratelimit-remaining(-requests)`, `ratelimit-remaining`, or IETF `RateLimit` `r`.
    pub remaining: Option<u64>,
    /// Time to reset: `x-ratelimit-reset(-requests)`, `ratelimit-reset`, or IETF `RateLimit` `t`.
    pub reset: Option<Duration>,
    /// IETF `RateLimit-Policy`: quota `q` per window `w` seconds (first policy listed).
    pub policy: Option<(u64, u64)>,
    /// `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl ProviderLimits {
    /// Reads the rate-limit headers of a response; `None` when there are none
    /// (the common case, which allocates nothing).
    pub fn from_headers(headers: &HeaderMap) -> Option<ProviderLimits> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let num = |name: &str| text(name).and_then(|v| v.trim().parse::<u64>().ok());
        let first = |names: [&str; 3]| names.into_iter().find_map(num);
        let now = SystemTime::now();
        let mut out = ProviderLimits {
            limit: first([
                "x-ratelimit-limit",
                "x-ratelimit-limit-requests",
                "ratelimit-limit",
            ]),
            remaining: first([
                "x-ratelimit-remaining",
                "x-ratelimit-remaining-requests",
                "ratelimit-remaining",
            ]),
            reset: [
                "x-ratelimit-reset",
                "x-ratelimit-reset-requests",
                "ratelimit-reset",
            ]
            .into_iter()
            .find_map(|n| text(n).and_then(|v| crate::backoff::parse_reset(v, now))),
            policy: text("ratelimit-policy").and_then(ietf_policy),
            retry_after: crate::backoff::retry_after(headers, now),
        };
        if let Some((r, t)) = text("ratelimit").and_then(ietf_remaining) {
            out.remaining = out.remaining.or(Some(r));
            out.reset = out.reset.or(Some(Duration::from_secs(t)));
        }
        (out != ProviderLimits::default()).then_some(out)
    }
}

/// Parameters of the first member of a structured-field list such as
/// `"default";q=100;w=60` (or the older draft's `100;w=60`, whose bare leading
/// number is returned under the key `""`).
fn sf_first_member(v: &str) -> impl Iterator<Item = (&str, u64)> {
    let member = v.split(',').next().unwrap_or("");
    member.split(';').enumerate().filter_map(|(i, p)| {
        let p = p.trim();
        match p.split_once('=') {
            Some((k, val)) => Some((k.trim(), val.trim().parse().ok()?)),
            None if i == 0 => Some(("", p.parse().ok()?)),
            None => None,
        }
    })
}

/// IETF `RateLimit-Policy`: `(q, w)`.
fn ietf_policy(v: &str) -> Option<(u64, u64)> {
    let (mut q, mut w) = (None, None);
    for (k, n) in sf_first_member(v) {
        match k {
            "q" | "" => q = q.or(Some(n)),
            "w" => w = Some(n),
            _ => {}
        }
    }
    Some((q?, w?))
}

/// IETF `RateLimit`: `(r, t)` of the first member.
fn ietf_remaining(v: &str) -> Option<(u64, u64)> {
    let (mut r, mut t) = (None, None);
    for (k, n) in sf_first_member(v) {
        match k {
            "r" => r = Some(n),
            "t" => t = Some(n),
            _ => {}
        }
    }
    Some((r?, t?))
}

/// One finished request or tunnel, as discovery sees it.
pub struct Seen<'a> {
    pub kind: TrafficKind,
    pub host: &'a str,
    pub method: &'a str,
    /// Path and query as the client sent them (empty for CONNECT).
    pub path: &'a str,
    pub api: Option<&'a Arc<str>>,
    pub consumer: Option<&'a Arc<str>>,
    pub status: u16,
    pub denied: bool,
    pub duration: Duration,
    pub limits: Option<&'a ProviderLimits>,
}

/// What was learned about an endpoint's provider limits.
#[derive(Debug, Clone, Default)]
struct LimitsSeen {
    last: ProviderLimits,
    max_limit: Option<u64>,
    max_reset: Option<Duration>,
    policy: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Endpoint {
    kind: TrafficKind,
    count: u64,
    denied: u64,
    /// 1xx..5xx, then anything else.
    status: [u64; 6],
    latency: [u64; LATENCY_BUCKETS_MS.len() + 1],
    latency_sum_us: u64,
    latency_min_us: u64,
    latency_max_us: u64,
    consumers: Vec<Arc<str>>,
    consumers_truncated: bool,
    apis: Vec<Arc<str>>,
    first_seen: SystemTime,
    last_seen: SystemTime,
    limits: Option<Box<LimitsSeen>>,
}

impl Endpoint {
    fn new(kind: TrafficKind, now: SystemTime) -> Self {
        Endpoint {
            kind,
            count: 0,
            denied: 0,
            status: [0; 6],
            latency: [0; LATENCY_BUCKETS_MS.len() + 1],
            latency_sum_us: 0,
            latency_min_us: u64::MAX,
            latency_max_us: 0,
            consumers: Vec::new(),
            consumers_truncated: false,
            apis: Vec::new(),
            first_seen: now,
            last_seen: now,
            limits: None,
        }
    }

    fn observe(&mut self, s: &Seen<'_>, now: SystemTime) {
        self.count += 1;
        self.denied += u64::from(s.denied);
        let class = match s.status {
            100..=599 => usize::from(s.status / 100 - 1),
            _ => 5,
        };
        self.status[class] += 1;
        let us = u64::try_from(s.duration.as_micros()).unwrap_or(u64::MAX);
        let ms = us / 1000;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms < *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[bucket] += 1;
        self.latency_sum_us = self.latency_sum_us.saturating_add(us);
        self.latency_min_us = self.latency_min_us.min(us);
        self.latency_max_us = self.latency_max_us.max(us);
        remember(
            &mut self.consumers,
            &mut self.consumers_truncated,
            s.consumer,
        );
        let mut ignored = false;
        remember(&mut self.apis, &mut ignored, s.api);
        self.last_seen = now;
        if let Some(l) = s.limits {
            let seen = self.limits.get_or_insert_with(Box::default);
            seen.max_limit = seen.max_limit.max(l.limit);
            seen.max_reset = seen.max_reset.max(l.reset);
            seen.policy = l.policy.or(seen.policy);
            seen.last = l.clone();
        }
    }

    /// The upper bound (ms) of the bucket holding quantile `q`, clamped to the minimum and
    /// maximum seen.
    fn quantile_ms(&self, q: f64) -> f64 {
        let max_ms = self.latency_max_us as f64 / 1000.0;
        let min_ms = (self.latency_min_us.min(self.latency_max_us)) as f64 / 1000.0;
        // Rank of the quantile among `count` observations, 1-based.
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return LATENCY_BUCKETS_MS
                    .get(i)
                    .map_or(max_ms, |b| (*b as f64).clamp(min_ms, max_ms));
            }
        }
        max_ms
    }

    fn to_json(&self, method: &str, pattern: &str) -> Value {
        let ms = |us: u64| us as f64 / 1000.0;
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
        let status: serde_json::Map<String, Value> = classes
            .iter()
            .zip(self.status)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| ((*c).to_owned(), json!(n)))
            .collect();
        let rate_limit = self.limits.as_ref().map(|l| {
            json!({
                "limit": l.last.limit,
                "remaining": l.last.remaining,
                "reset_seconds": l.last.reset.map(|d| d.as_secs_f64()),
                "policy": l.last.policy.map(|(q, w)| json!({ "quota": q, "window_seconds": w })),
                "retry_after_seconds": l.last.retry_after.map(|d| d.as_secs()),
                "max_limit": l.max_limit,
                "max_reset_seconds": l.max_reset.map(|d| d.as_secs_f64()),
                "max_policy": l.policy.map(|(q, w)| json!({ "quota": q, "window_seconds": w })),
            })
        });
        json!({
            "method": method,
            "pattern": pattern,
            "kind": self.kind.as_str(),
            "apis": self.apis.iter().map(|a| &**a).collect::<Vec<_>>(),
            "count": self.count,
            "denied": self.denied,
            "status": status,
            "latency_ms": {
                "min": ms(self.latency_min_us.min(self.latency_max_us)),
                "avg": ms(self.latency_sum_us / self.count.max(1)),
                "max": ms(self.latency_max_us),
                "p50": self.quantile_ms(0.5),
                "p99": self.quantile_ms(0.99),
            },
            "consumers": self.consumers.iter().map(|c| &**c).collect::<Vec<_>>(),
            "consumers_truncated": self.consumers_truncated,
            "first_seen": rfc3339(self.first_seen),
            "last_seen": rfc3339(self.last_seen),
            "rate_limit": rate_limit,
        })
    }
}

/// Adds `name` to a bounded set of names (no allocation: an `Arc` clone).
fn remember(set: &mut Vec<Arc<str>>, truncated: &mut bool, name: Option<&Arc<str>>) {
    let Some(name) = name else { return };
    if set.iter().any(|c| c == name) {
        return;
    }
    if set.len() < MAX_CONSUMERS {
        set.push(Arc::clone(name));
    } else {
        *truncated = true;
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Debug, Default)]
struct Host {
    /// Keyed by `METHOD pattern` (one string, so a lookup needs no allocation).
    endpoints: HashMap<Box<str>, Endpoint>,
    /// Requests to endpoints beyond `max_endpoints_per_host`.
    overflow: u64,
}

/// One shard of the table: hosts by lower-cased name.
type Shard = Mutex<HashMap<Box<str>, Host>>;

/// The process-wide endpoint table (kept across reloads; bounds are read from
/// the active configuration at each observation).
pub struct Discovery {
    shards: Box<[Shard]>,
    hasher: RandomState,
    hosts: AtomicUsize,
    endpoints: AtomicUsize,
    /// Requests to hosts beyond `max_hosts`.
    host_overflow: AtomicU64,
    metrics: Arc<Metrics>,
}

thread_local! {
    /// `(host, METHOD pattern)` scratch buffers, reused so a repeat endpoint allocates nothing.
    static KEY: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves counters at worst slightly off; keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Discovery {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Discovery {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            hosts: AtomicUsize::new(0),
            endpoints: AtomicUsize::new(0),
            host_overflow: AtomicU64::new(0),
            metrics,
        }
    }

    /// Records one finished request or tunnel.
    pub fn record(&self, cfg: &DiscoveryConfig, s: &Seen<'_>) {
        if !cfg.enabled || s.host.is_empty() {
            return;
        }
        KEY.with(|k| {
            let Ok(mut k) = k.try_borrow_mut() else {
                return;
            };
            let (host, key) = &mut *k;
            host.clear();
            host.extend(s.host.chars().map(|c| c.to_ascii_lowercase()));
            key.clear();
            key.push_str(s.method);
            key.push(' ');
            if s.kind != TrafficKind::Connect {
                normalize_into(s.path, key);
            }
            self.record_keyed(cfg, host, key, s);
        });
    }

    fn record_keyed(&self, cfg: &DiscoveryConfig, host: &str, key: &str, s: &Seen<'_>) {
        let now = SystemTime::now();
        let shard = &self.shards[(self.hasher.hash_one(host) as usize) % SHARDS];
        let mut hosts = lock(shard);
        let entry = match hosts.get_mut(host) {
            Some(h) => h,
            None => {
                if self.hosts.fetch_add(1, Ordering::Relaxed) >= cfg.max_hosts {
                    self.hosts.fetch_sub(1, Ordering::Relaxed);
                    drop(hosts);
                    self.host_overflow.fetch_add(1, Ordering::Relaxed);
                    self.metrics.discovery_overflow();
                    return;
                }
                hosts.entry(host.into()).or_default()
            }
        };
        let ep = match entry.endpoints.get_mut(key) {
            Some(ep) => ep,
            None => {
                if entry.endpoints.len() >= cfg.max_endpoints_per_host {
                    entry.overflow += 1;
                    drop(hosts);
                    self.metrics.discovery_overflow();
                    return;
                }
                let n = self.endpoints.fetch_add(1, Ordering::Relaxed) + 1;
                self.metrics.discovery_endpoints(n);
                entry
                    .endpoints
                    .entry(key.into())
                    .or_insert_with(|| Endpoint::new(s.kind, now))
            }
        };
        ep.observe(s, now);
    }

    /// The table as JSON (`GET /admin/discovery`), hosts and endpoints sorted.
    pub fn snapshot(&self, cfg: &DiscoveryConfig) -> Value {
        let mut hosts: Vec<Value> = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (name, h) in shard.iter() {
                let mut eps: Vec<(&str, &str, &Endpoint)> = h
                    .endpoints
                    .iter()
                    .map(|(k, ep)| {
                        let (m, p) = k.split_once(' ').unwrap_or((k, ""));
                        (p, m, ep)
                    })
                    .collect();
                eps.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
                hosts.push(json!({
                    "host": &**name,
                    "overflow": h.overflow,
                    "endpoints": eps.iter().map(|(p, m, ep)| ep.to_json(m, p)).collect::<Vec<_>>(),
                }));
            }
        }
        hosts.sort_by(|a, b| a["host"].as_str().cmp(&b["host"].as_str()));
        json!({
            "enabled": cfg.enabled,
            "max_hosts": cfg.max_hosts,
            "max_endpoints_per_host": cfg.max_endpoints_per_host,
            "endpoints": self.endpoints.load(Ordering::Relaxed),
            "host_overflow": self.host_overflow.load(Ordering::Relaxed),
            "hosts": hosts,
        })
    }
}

/// The path pattern of a request path (see [`normalize_into`]).
pub fn normalize_path(path: &str) -> String {
    let mut out = String::new();
    normalize_into(path, &mut out);
    out
}

/// Appends the pattern of `path` to `out`. Rules, in order:
/// - the query (`?…`) and fragment (`#…`) are dropped;
/// - empty segments and `.` are dropped, `..` removes the segment before it, a
///   trailing slash is dropped (`/` stays `/`);
/// - a segment becomes `{id}` when it [`is_id`];
/// - after [`MAX_SEGMENTS`] segments the rest becomes `/**`.
pub fn normalize_into(path: &str, out: &mut String) {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let start = out.len();
    // Segment start offsets in `out`, for `..` (a small fixed array: no allocation).
    let mut starts = [0usize; MAX_SEGMENTS];
    let mut depth = 0usize;
    let mut truncated = false;
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if truncated {
                    continue;
                }
                if depth > 0 {
                    depth -= 1;
                    out.truncate(starts[depth]);
                }
            }
            _ if depth >= MAX_SEGMENTS => truncated = true,
            _ => {
                starts[depth] = out.len();
                depth += 1;
                out.push('/');
                out.push_str(if is_id(seg) { "{id}" } else { seg });
            }
        }
    }
    if truncated {
        out.push_str("/**");
    }
    if out.len() == start {
        out.push('/');
    }
}

/// Whether a path segment is an identifier rather than a fixed name:
/// - longer than [`MAX_SEGMENT_LEN`] bytes;
/// - digits only, or digits with `-_.:,` (`123`, `2024-01-31`, `1.5`);
/// - a UUID (`8-4-4-4-12` hex digits);
/// - at least 12 hex digits including a digit (`9f8c0e1d2a3b`, object ids, hashes);
/// - an opaque token: at least 16 of `A-Za-z0-9_-.~+=` with at least one digit and one
///   letter (`cus_9s6XKzkNRiz8i3`, base64url);
/// - an email address (`@` or `%40` with a `.` after it);
/// - anything a pattern cannot hold as a literal (`*`, `{`, `}`).
pub fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.len() > MAX_SEGMENT_LEN || seg.contains(['*', '{', '}']) {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if digits > 0
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.' | b':' | b','))
    {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    if b.len() >= 12 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    if b.len() >= 16
        && digits > 0
        && letters > 0
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'~' | b'+' | b'=')
        })
    {
        return true;
    }
    let at = seg.find('@').or_else(|| {
        b.windows(3)
            .position(|w| w[0] == b'%' && w[1] == b'4' && w[2] == b'0')
    });
    at.is_some_and(|i| i > 0 && seg[i..].contains('.'))
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
#[path = "discovery_tests.rs"]
mod tests;
