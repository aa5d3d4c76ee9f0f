//! The upstream retry loop: send, and when the attempt fails in a way the API's
//! `retry.on` lists, wait and send again.
//!
//! Only idempotent methods (GET HEAD OPTIONS PUT DELETE TRACE) are retried,
//! unless the request carries `Idempotency-Key` or the API sets
//! `retry.non_idempotent`. The n-th retry waits a random time in
//! `[0, min(max, base × 2^(n-1))]` (full jitter; `jitter: none` waits the bound
//! itself), or longer when the upstream's `Retry-After` asks for it
//! (`respect_retry_after`). A `Retry-After` above `max_retry_after`, or a wait
//! that would end past `deadline`, stops the loop: the client gets the last
//! upstream response as it was. Each attempt has `per_try_timeout` for its
//! response headers. Retries also stop when the API's retry budget is spent
//! (at most `budget` of its requests over 10 s, with `budget_min_per_second`
//! always allowed) or its circuit breaker opens.
//!
//! Request bodies: a retryable request's body is read into memory up to
//! `max_replay_body` and replayed byte for byte on every attempt. A body
//! declared larger (`Content-Length`), or found larger while reading (chunked),
//! is streamed: what was read goes first, then the rest of the client's stream,
//! and the request is tried once. Requests that cannot be retried are never
//! buffered. A response that is retried is read and discarded during the wait
//! (bounded in bytes and time) so its keep-alive connection can be reused.

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tollgate_config::{Condition, Retry as RetryConfig, resilience::Jitter};
use tollgate_policy::{ErrorCode, GatewayError};

use crate::backoff;
use crate::body::{BodyError, BodyStats, Buffered, RequestBody};
use crate::breaker::{Outcome, Permit};
use crate::dns::ResolveError;
use crate::observe::count_connect_error;
use crate::resilience::ApiResilience;
use crate::respond::{connect_error_in, upstream_failure};
use crate::state::Gateway;
use crate::upstream::{ConnectError, Upstream};

/// Request bodies up to this size are kept for group failover when the API has no `retry`.
const FAILOVER_REPLAY_BODY: u64 = 64 * 1024;
/// Bytes of a discarded response read to keep its connection; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Time allowed for draining a discarded response: the backoff wait, but at least
/// [`MIN_DRAIN_TIME`] and at most [`DRAIN_TIME`].
const DRAIN_TIME: Duration = Duration::from_secs(2);
const MIN_DRAIN_TIME: Duration = Duration::from_millis(20);
/// The retry budget's sliding window.
const BUDGET_WINDOW_SECS: u64 = 10;

/// Whether the method may be repeated without changing the outcome (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether this request may be retried at all under `cfg`.
pub fn retryable_request(cfg: &RetryConfig, method: &Method, headers: &HeaderMap) -> bool {
    cfg.attempts > 1
        && (is_idempotent(method) || cfg.non_idempotent || headers.contains_key("idempotency-key"))
}

/// The wait before retry number `retry` (1 for the first retry), before jitter is applied.
pub fn backoff_ceiling(cfg: &RetryConfig, retry: u32) -> Duration {
    let base = cfg.backoff.base.get();
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cfg.backoff.max.get())
}

/// The wait before retry number `retry`, jitter applied.
pub fn backoff_delay(cfg: &RetryConfig, retry: u32) -> Duration {
    let ceiling = backoff_ceiling(cfg, retry);
    match cfg.jitter {
        Jitter::None => ceiling,
        Jitter::Full => ceiling.mul_f64(random_unit()),
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
}

/// A uniform number in [0, 1) from a per-thread xorshift generator (jitter needs spread, not secrecy).
fn random_unit() -> f64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The retry budget of one API: retries may add at most `ratio` of its requests
/// over the last [`BUDGET_WINDOW_SECS`], plus `min_per_second` always.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    epoch: Instant,
    /// Per-second buckets: (second, requests, retries).
    slots: Mutex<[(u64, u64, u64); BUDGET_WINDOW_SECS as usize]>,
}

impl Budget {
    pub fn new(cfg: &RetryConfig) -> Self {
        Self {
            ratio: cfg.budget.fraction(),
            min_per_second: cfg.budget_min_per_second,
            epoch: Instant::now(),
            slots: Mutex::new([(0, 0, 0); BUDGET_WINDOW_SECS as usize]),
        }
    }

    fn with_slot<R>(&self, f: impl FnOnce(&mut (u64, u64, u64), u64, u64) -> R) -> R {
        let sec = self.epoch.elapsed().as_secs();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = sec.saturating_sub(BUDGET_WINDOW_SECS - 1);
        let (mut reqs, mut retries) = (0, 0);
        for s in slots.iter() {
            if s.0 >= oldest && s.0 <= sec {
                reqs += s.1;
                retries += s.2;
            }
        }
        let slot = &mut slots[(sec % BUDGET_WINDOW_SECS) as usize];
        if slot.0 != sec {
            *slot = (sec, 0, 0);
        }
        f(slot, reqs, retries)
    }

    /// Counts one request (not its retries).
    pub fn request(&self) {
        self.with_slot(|s, _, _| s.1 += 1);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        let ratio = self.ratio;
        let floor = u64::from(self.min_per_second) * BUDGET_WINDOW_SECS;
        self.with_slot(|s, reqs, retries| {
            let allowed = ((reqs as f64 * ratio).floor() as u64).max(floor);
            let ok = retries < allowed;
            if ok {
                s.2 += 1;
            }
            ok
        })
    }
}

/// Why the loop stops instead of retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `attempts` attempts were made.
    Exhausted,
    /// The outcome is not in `on`.
    NotListed,
    /// `Retry-After` asks for more than `max_retry_after`.
    RetryAfterTooLong,
    /// The wait would end at or after the deadline.
    PastDeadline,
}

/// The retry schedule of one request: when (and whether) the next attempt goes out.
pub struct Schedule<'a> {
    pub cfg: &'a RetryConfig,
    /// First send + `deadline`.
    pub deadline: Option<Instant>,
}

impl Schedule<'_> {
    /// After attempt number `attempts` ended with `outcome`: the wait before the
    /// next one, or why there is none. `retry_after` is the response's
    /// `Retry-After`; `backoff_left` the time left of a provider back-off.
    pub fn next(
        &self,
        attempts: u32,
        outcome: Outcome,
        retry_after: Option<Duration>,
        backoff_left: Option<Duration>,
    ) -> Result<Duration, Stop> {
        let r = self.cfg;
        if attempts >= r.attempts {
            return Err(Stop::Exhausted);
        }
        if !listed(&r.on, outcome) {
            return Err(Stop::NotListed);
        }
        let mut wait = backoff_delay(r, attempts);
        if r.respect_retry_after
            && let Some(ra) = retry_after
        {
            if ra > r.max_retry_after.get() {
                return Err(Stop::RetryAfterTooLong);
            }
            wait = wait.max(ra);
        }
        if let Some(left) = backoff_left {
            wait = wait.max(left);
        }
        if self.deadline.is_some_and(|d| Instant::now() + wait >= d) {
            return Err(Stop::PastDeadline);
        }
        Ok(wait)
    }
}

/// The request to send, minus its body.
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The request span's context when traced: each attempt gets a CLIENT span, and its
    /// `traceparent` names that span (spans.rs).
    pub trace: Option<tollgate_trace::ChildCtx>,
    /// The API's upstream group (balance.rs): each attempt picks its target, and an idempotent
    /// request whose attempt fails to connect (or is reset) moves to another target at once.
    pub group: Option<crate::balance::Pick>,
    /// Send over HTTP/2 prior knowledge (a gRPC call to an `http://` upstream, upgrade.rs).
    pub h2c: bool,
}

/// What the loop ended with.
pub enum Sent {
    Response(Response<Incoming>),
    Failed {
        err: GatewayError,
        /// Nothing was sent (the guard refused every address).
        not_sent: bool,
    },
}

/// The whole exchange: the final result, attempts made, and time from the
/// first send to the final response headers (or failure).
pub struct Exchange {
    pub sent: Sent,
    pub attempts: u32,
    pub upstream_duration: Duration,
}

/// The request body, ready to send once or again.
enum Prepared {
    Replay(Arc<Buffered>),
    Once(Option<RequestBody>),
}

impl Prepared {
    fn take(&mut self) -> Option<RequestBody> {
        match self {
            Self::Replay(b) => Some(RequestBody::replay(b.clone())),
            Self::Once(b) => b.take(),
        }
    }
    fn replayable(&self) -> bool {
        matches!(self, Self::Replay(_))
    }
}

/// Reads `body` into memory when it fits in `max` bytes; otherwise returns a
/// body that sends what was read followed by the rest of the stream.
async fn prepare(mut body: RequestBody, max: u64) -> Result<Prepared, BodyError> {
    if body.is_end_stream() {
        return Ok(Prepared::Replay(Arc::default()));
    }
    if body.size_hint().lower() > max {
        return Ok(Prepared::Once(Some(body)));
    }
    let mut buf = Buffered::default();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                buf.len += data.len() as u64;
                buf.chunks.push(data);
                if buf.len > max {
                    return Ok(Prepared::Once(Some(RequestBody::prefixed(
                        buf.chunks, body,
                    ))));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    buf.trailers = Some(t);
                }
            }
        }
    }
    Ok(Prepared::Replay(Arc::new(buf)))
}

/// The label for `tollgate_upstream_retries_total{reason}`.
fn reason(o: Outcome) -> &'static str {
    match o {
        Outcome::Connect => "connect",
        Outcome::Timeout => "timeout",
        Outcome::Reset => "reset",
        Outcome::Status(s) => match s {
            408 => "408",
            425 => "425",
            429 => "429",
            500 => "500",
            502 => "502",
            503 => "503",
            504 => "504",
            s if s >= 500 => "5xx",
            _ => "4xx",
        },
    }
}

fn listed(on: &[Condition], o: Outcome) -> bool {
    on.iter().any(|c| match (o, c) {
        (Outcome::Status(s), c) => c.matches_status(s),
        (Outcome::Connect, Condition::Connect)
        | (Outcome::Timeout, Condition::Timeout)
        | (Outcome::Reset, Condition::Reset) => true,
        _ => false,
    })
}

/// One attempt's raw result.
enum Attempt {
    Response(Response<Incoming>),
    Failed {
        err: GatewayError,
        outcome: Option<Outcome>,
        not_sent: bool,
    },
}

/// Sends `out` with `body`, retrying as the API's configuration allows.
/// `permit` is the breaker's leave for the first attempt. `body` is the
/// client's stream (counted into `stats`), or a body DLP already buffered.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    gw: &Gateway,
    upstream: &Upstream,
    api: Option<&ApiResilience>,
    mut out: Outgoing,
    client_body: RequestBody,
    stats: Arc<BodyStats>,
    mut permit: Option<Permit>,
    request_id: &str,
) -> Exchange {
    let start = Instant::now();
    let retry = api.and_then(|a| a.retry.as_ref());
    if let (Some(a), Some(_)) = (api, retry) {
        a.budget_request();
    }
    let eligible = retry.filter(|r| retryable_request(r, &out.method, &out.headers));
    let deadline = eligible.map(|r| start + r.deadline.get());
    // Group failover needs a replayable body even when the API has no `retry`.
    let failover = out.group.is_some() && (eligible.is_some() || is_idempotent(&out.method));
    let replay = match eligible {
        Some(r) => Some((r.max_replay_body.get(), r.deadline.get())),
        None if failover => Some((FAILOVER_REPLAY_BODY, upstream.response_header_timeout)),
        None => None,
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut prepared = match replay {
        Some((max_body, within)) => {
            let read = prepare(client_body, max_body);
            match tokio::time::timeout(within, read).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => {
                    return Exchange {
                        sent: Sent::Failed {
                            err: GatewayError::new(
                                ErrorCode::BadRequest,
                                "the request body could not be read (invalid chunked encoding or aborted)",
                            ),
                            not_sent: true,
                        },
                        attempts: 0,
                        upstream_duration: start.elapsed(),
                    };
                }
                Err(_) => {
                    return Exchange {
                        sent: Sent::Failed {
                            err: GatewayError::new(
                                ErrorCode::BadRequest,
                                "the request body did not arrive within the retry deadline",
                            ),
                            not_sent: true,
                        },
                        attempts: 0,
                        upstream_duration: start.elapsed(),
                    };
                }
            }
        }
        None => Prepared::Once(Some(client_body)),
    };

    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let Some(body) = prepared.take() else {
            // Unreachable: a one-shot body is never retried.
            return failed(internal(), attempts, start);
        };
        // An upstream group picks this attempt's target (an untried one first).
        let picked = match &out.group {
            Some(p) => match p.pick(&tried) {
                Some(t) => Some(t),
                None if attempts == 1 => {
                    return Exchange {
                        sent: Sent::Failed {
                            err: GatewayError::new(
                                ErrorCode::NoHealthyUpstream,
                                "every target of the upstream group is unhealthy or ejected",
                            ),
                            not_sent: true,
                        },
                        attempts: 0,
                        upstream_duration: start.elapsed(),
                    };
                }
                None => {
                    return failed(
                        GatewayError::new(
                            ErrorCode::NoHealthyUpstream,
                            "no healthy target was left to retry on",
                        ),
                        attempts - 1,
                        start,
                    );
                }
            },
            None => None,
        };
        let mut req = Request::new(body);
        *req.method_mut() = out.method.clone();
        *req.uri_mut() = match &picked {
            Some(t) => t.uri(&out.uri).unwrap_or_else(|| out.uri.clone()),
            None => out.uri.clone(),
        };
        // A one-shot body means this is the only attempt: hand the headers over instead of
        // copying them (the method and URI are still read below, and are cheap).
        *req.headers_mut() = if prepared.replayable() {
            out.headers.clone()
        } else {
            std::mem::take(&mut out.headers)
        };

        if let Some(t) = picked.as_ref().and_then(|p| p.target()) {
            if let Ok(v) = http::HeaderValue::from_str(t.authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
            tried.push(picked.as_ref().map_or(0, |p| p.index));
        }
        // gRPC to `http://` targets (`out.h2c`) goes over the group's h2c client, as for one upstream.
        let client = match &out.group {
            Some(p) if out.h2c => &p.group.client.h2c,
            Some(p) => &p.group.client.client,
            None if out.h2c => &upstream.h2c,
            None => &upstream.client,
        };
        // per_try_timeout belongs to retryable requests; a request sent once keeps the
        // plain upstream.response_header_timeout.
        let mut limit = upstream.response_header_timeout;
        if let Some(r) = eligible {
            limit = limit.min(r.per_try_timeout.get());
        }
        if let Some(d) = deadline {
            limit = limit.min(d.saturating_duration_since(Instant::now()));
        }
        let span = out
            .trace
            .as_ref()
            .map(|t| t.attempt(attempts, &out.method, &out.uri, req.headers_mut()));
        let result = tokio::time::timeout(limit, client.request(req)).await;
        let attempt = classify(gw, result, &stats, request_id);
        if let Some(s) = span {
            match &attempt {
                Attempt::Response(r) => s.response(r.status().as_u16()),
                Attempt::Failed { err, .. } => s.failed(err.code.as_str()),
            }
        }

        let outcome = match &attempt {
            Attempt::Response(r) => Some(Outcome::Status(r.status().as_u16())),
            Attempt::Failed { outcome, .. } => *outcome,
        };
        if let (Some(a), Some(p)) = (api, permit.take()) {
            match (&a.breaker, outcome) {
                (Some(b), Some(o)) => b.record(p, b.is_failure(o)),
                // A client or guard fault says nothing about the upstream.
                _ => drop(p),
            }
        }
        if let (Some(a), Attempt::Response(r)) = (api, &attempt) {
            a.learn(r.status().as_u16(), r.headers());
        }
        if let (Some(p), Some(t)) = (&out.group, picked) {
            p.group.record(t.index, outcome);
            drop(t);
            // Failover: nothing (connect) or nothing usable (reset, idempotent only) came back;
            // another target gets the request at once, outside the retry schedule.
            let moved = match outcome {
                Some(Outcome::Connect) => true,
                Some(Outcome::Reset) => is_idempotent(&out.method),
                _ => false,
            };
            if failover && moved && prepared.replayable() && p.has_untried(&tried) {
                let breaker_ok = match api.and_then(|a| a.breaker.as_ref()) {
                    Some(b) => match b.acquire() {
                        Ok(pm) => {
                            permit = Some(pm);
                            true
                        }
                        Err(_) => false,
                    },
                    None => true,
                };
                if breaker_ok {
                    if let Some(a) = api {
                        gw.metrics.upstream_retry(&a.name, "failover");
                    }
                    tracing::debug!(request.id = %request_id, api = %p.group.api, "upstream target failed; trying another");
                    continue;
                }
            }
        }

        // Decide whether to go again.
        let (Some(r), Some(o), Some(a)) = (eligible, outcome, api) else {
            return finish(attempt, attempts, start);
        };
        if !prepared.replayable() {
            return finish(attempt, attempts, start);
        }
        let retry_after = match &attempt {
            Attempt::Response(resp) => backoff::retry_after(resp.headers(), SystemTime::now()),
            Attempt::Failed { .. } => None,
        };
        let schedule = Schedule { cfg: r, deadline };
        let Ok(wait) = schedule.next(attempts, o, retry_after, a.backoff.remaining()) else {
            return finish(attempt, attempts, start);
        };
        if !a.budget_try_retry() {
            gw.metrics.retry_budget_exhausted(&a.name);
            return finish(attempt, attempts, start);
        }
        // The breaker may have opened meanwhile (this or other requests' failures).
        if let Some(b) = &a.breaker {
            match b.acquire() {
                Ok(p) => permit = Some(p),
                Err(_) => return finish(attempt, attempts, start),
            }
        }
        gw.metrics.upstream_retry(&a.name, reason(o));
        tracing::debug!(
            request.id = %request_id, api = %a.name, retry.attempt = attempts + 1,
            retry.reason = reason(o), retry.wait_ms = wait.as_millis() as u64,
            "retrying upstream request"
        );
        match attempt {
            Attempt::Response(resp) => {
                let limit = wait.clamp(MIN_DRAIN_TIME, DRAIN_TIME);
                tokio::join!(drain(resp, limit), tokio::time::sleep(wait));
            }
            Attempt::Failed { .. } => tokio::time::sleep(wait).await,
        }
    }
}

fn internal() -> GatewayError {
    GatewayError::new(ErrorCode::Internal, "the request body was already sent")
}

fn failed(err: GatewayError, attempts: u32, start: Instant) -> Exchange {
    Exchange {
        sent: Sent::Failed {
            err,
            not_sent: false,
        },
        attempts,
        upstream_duration: start.elapsed(),
    }
}

fn finish(a: Attempt, attempts: u32, start: Instant) -> Exchange {
    let sent = match a {
        Attempt::Response(r) => Sent::Response(r),
        Attempt::Failed { err, not_sent, .. } => Sent::Failed { err, not_sent },
    };
    Exchange {
        sent,
        attempts,
        upstream_duration: start.elapsed(),
    }
}

/// Maps one attempt's result to a response or a gateway error plus its outcome class.
fn classify(
    gw: &Gateway,
    result: Result<
        Result<Response<Incoming>, hyper_util::client::legacy::Error>,
        tokio::time::error::Elapsed,
    >,
    stats: &BodyStats,
    request_id: &str,
) -> Attempt {
    match result {
        Ok(Ok(resp)) => Attempt::Response(resp),
        Err(_) => Attempt::Failed {
            err: GatewayError::new(
                ErrorCode::UpstreamTimeout,
                "the upstream did not send response headers in time",
            ),
            outcome: Some(Outcome::Timeout),
            not_sent: false,
        },
        Ok(Err(e)) => {
            tracing::debug!(request.id = %request_id, error = %e, "upstream request failed");
            let body_failed = stats.failed();
            let err = upstream_failure(&e, body_failed);
            let mut not_sent = false;
            let outcome = if body_failed {
                None
            } else if let Some(ce) = connect_error_in(&e) {
                count_connect_error(gw, ce);
                match ce {
                    // The guard refused every address: nothing was sent, and retrying cannot help.
                    ConnectError::Resolve(ResolveError::Blocked(_)) => {
                        not_sent = true;
                        None
                    }
                    ConnectError::InvalidHost => None,
                    _ => Some(Outcome::Connect),
                }
            } else if err.code == ErrorCode::UpstreamTimeout {
                Some(Outcome::Timeout)
            } else {
                // Closed, reset, or an invalid response after the request went out.
                Some(Outcome::Reset)
            };
            Attempt::Failed {
                err,
                outcome,
                not_sent,
            }
        }
    }
}

/// Reads and discards a response that will not be forwarded, bounded in bytes
/// and time, so a small body leaves its keep-alive connection reusable (a
/// larger or slower one is dropped, which closes its connection).
async fn drain(resp: Response<Incoming>, limit: Duration) {
    let mut body = resp.into_body();
    let read = async {
        let mut n = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, Bytes::len);
            if n > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(limit, read).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RetryConfig {
        RetryConfig {
            jitter: Jitter::None,
            ..RetryConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let c = cfg();
        let got: Vec<u128> = (1..=8).map(|n| backoff_delay(&c, n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff_ceiling(&c, 40), Duration::from_secs(5));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let c = RetryConfig::default();
        let samples: Vec<Duration> = (0..200).map(|_| backoff_delay(&c, 3)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(400)));
        let low = samples
            .iter()
            .filter(|d| **d < Duration::from_millis(200))
            .count();
        assert!((40..=160).contains(&low), "{low} of 200 below the middle");
    }

    #[test]
    fn only_idempotent_requests_are_retryable() {
        let c = RetryConfig::default();
        let none = HeaderMap::new();
        assert!(retryable_request(&c, &Method::GET, &none));
        assert!(retryable_request(&c, &Method::PUT, &none));
        assert!(!retryable_request(&c, &Method::POST, &none));
        assert!(!retryable_request(&c, &Method::PATCH, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", "k1".parse().unwrap());
        assert!(retryable_request(&c, &Method::POST, &keyed));
        let opted = RetryConfig {
            non_idempotent: true,
            ..RetryConfig::default()
        };
        assert!(retryable_request(&opted, &Method::POST, &none));
        let once = RetryConfig {
            attempts: 1,
            ..RetryConfig::default()
        };
        assert!(!retryable_request(&once, &Method::GET, &none));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_caps_retries_at_a_share_of_requests() {
        let c = RetryConfig {
            budget: tollgate_config::resilience::Percentage(20.0),
            budget_min_per_second: 1,
            ..RetryConfig::default()
        };
        let b = Budget::new(&c);
        for _ in 0..100 {
            b.request();
        }
        // 20% of 100 = 20 retries (the floor, 1/s over 10 s, is lower).
        let granted = (0..50).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 20);
        // The window slides: after 10 s the old requests and retries no longer count.
        tokio::time::advance(Duration::from_secs(10)).await;
        let granted = (0..50).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 10, "only the floor of 1/s × 10 s is left");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_floor_lets_low_traffic_retry() {
        let b = Budget::new(&RetryConfig::default());
        b.request();
        // 20% of 1 request is 0, but 10/s × 10 s are always allowed.
        assert_eq!((0..150).filter(|_| b.try_retry()).count(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_doubles_honours_retry_after_and_stops_at_the_deadline() {
        let c = RetryConfig {
            attempts: 10,
            backoff: tollgate_config::resilience::Backoff {
                base: tollgate_config::Duration::from_millis(100),
                max: tollgate_config::Duration::from_secs(1),
            },
            deadline: tollgate_config::Duration::from_secs(3),
            ..cfg()
        };
        let start = Instant::now();
        let s = Schedule {
            cfg: &c,
            deadline: Some(start + c.deadline.get()),
        };
        let mut waits = Vec::new();
        let mut attempts = 1;
        let stop = loop {
            match s.next(attempts, Outcome::Status(503), None, None) {
                Ok(w) => {
                    waits.push(w.as_millis());
                    tokio::time::advance(w).await;
                    attempts += 1;
                }
                Err(stop) => break stop,
            }
        };
        // 100+200+400+800+1000 = 2.5 s; the next 1 s wait would end at 3.5 s.
        assert_eq!(waits, [100, 200, 400, 800, 1000]);
        assert_eq!(stop, Stop::PastDeadline);
        assert_eq!(start.elapsed(), Duration::from_millis(2500));

        let s = Schedule {
            cfg: &c,
            deadline: Some(Instant::now() + c.deadline.get()),
        };
        let secs = Duration::from_secs;
        // Retry-After and a provider back-off lengthen the wait; neither shortens it.
        assert_eq!(
            s.next(1, Outcome::Status(429), Some(secs(2)), None),
            Ok(secs(2))
        );
        assert_eq!(
            s.next(
                1,
                Outcome::Status(503),
                None,
                Some(Duration::from_millis(50))
            ),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            s.next(1, Outcome::Status(429), Some(secs(31)), None),
            Err(Stop::RetryAfterTooLong)
        );
        assert_eq!(
            s.next(1, Outcome::Status(429), Some(secs(3)), None),
            Err(Stop::PastDeadline)
        );
        assert_eq!(
            s.next(10, Outcome::Status(503), None, None),
            Err(Stop::Exhausted)
        );
        assert_eq!(
            s.next(1, Outcome::Status(500), None, None),
            Err(Stop::NotListed)
        );
        let ignoring = RetryConfig {
            respect_retry_after: false,
            ..c.clone()
        };
        let s = Schedule {
            cfg: &ignoring,
            deadline: None,
        };
        assert_eq!(
            s.next(1, Outcome::Status(429), Some(secs(31)), None),
            Ok(Duration::from_millis(100))
        );
    }

    #[tokio::test]
    async fn conditions_and_reasons() {
        let on = RetryConfig::default().on;
        assert!(listed(&on, Outcome::Status(503)));
        assert!(listed(&on, Outcome::Reset));
        assert!(!listed(&on, Outcome::Status(500)));
        assert_eq!(reason(Outcome::Status(429)), "429");
        assert_eq!(reason(Outcome::Status(599)), "5xx");
    }
}
