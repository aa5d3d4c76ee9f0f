//! Provider back-off: learn the provider's own rate limit from its responses
//! and stop sending to the API until it resets.
//!
//! Learned from any upstream response of the API: a 429 or 503 with
//! `Retry-After` (delta-seconds or HTTP-date); or rate-limit fields showing the
//! quota exhausted — `x-ratelimit-remaining: 0` with `x-ratelimit-reset`
//! (delta-seconds, a Unix time, or a duration such as `1m30s`; the `-requests`
//! and `-tokens` variants too), the older draft's `ratelimit-remaining: 0` with
//! `ratelimit-reset`, or the IETF `RateLimit: "name";r=0;t=N`. The back-off
//! lasts the signalled time, capped by `provider_backoff.cap`.
//!
//! While it lasts, a client sees **429** `tollgate-error: provider_backoff` with
//! `Retry-After: <seconds left>` and nothing is sent upstream. The state is kept
//! per API in this process and, with `state.redis`, shared with the other replicas; an API
//! with several credential keys backs off per key first (see resilience.rs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tokio::time::Instant;

/// Largest plain number read as delta-seconds in `x-ratelimit-reset`; bigger ones are Unix times.
const EPOCH_THRESHOLD: f64 = 1_000_000_000.0;

/// One API's back-off deadline, shared by all its requests.
#[derive(Debug)]
pub struct ProviderBackoff {
    epoch: Instant,
    /// Milliseconds after `epoch` until which nothing is sent (0: none).
    until_ms: AtomicU64,
}

impl Default for ProviderBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl ProviderBackoff {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    /// Milliseconds since this back-off was created (its own clock).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Time left in the current back-off, if one is running.
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Backs off for `wait` (capped at `cap`) from now, unless a longer back-off already runs.
    /// Returns true when this extended the back-off.
    pub fn extend(&self, wait: Duration, cap: Duration) -> bool {
        let wait = wait.min(cap);
        if wait.is_zero() {
            return false;
        }
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        self.until_ms.fetch_max(until, Ordering::Relaxed) < until
    }

    /// Carries a running back-off over to a new state (when an API's settings change).
    pub fn inherit(&self, old: &ProviderBackoff) {
        if let Some(left) = old.remaining() {
            self.extend(left, Duration::MAX);
        }
    }
}

/// How long the provider asks us to stay away, judging by one response.
pub fn learn(status: u16, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if matches!(status, 429 | 503)
        && let Some(d) = retry_after(headers, now)
    {
        return Some(d);
    }
    quota_exhausted(headers, now)
}

/// `Retry-After` as a wait: delta-seconds, or an HTTP-date (a past date is zero).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The time until reset when the response's rate-limit fields say nothing is left.
pub fn quota_exhausted(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut longest: Option<Duration> = None;
    let mut take = |d: Duration| longest = Some(longest.map_or(d, |l| l.max(d)));
    for (remaining, reset) in [
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
        ("ratelimit-remaining", "ratelimit-reset"),
    ] {
        let exhausted = text(remaining)
            .and_then(|r| r.trim().parse::<f64>().ok())
            .is_some_and(|r| r <= 0.0);
        if exhausted && let Some(d) = text(reset).and_then(|t| parse_reset(t, now)) {
            take(d);
        }
    }
    for v in headers.get_all("ratelimit") {
        if let Some(d) = v.to_str().ok().and_then(ietf_exhausted) {
            take(d);
        }
    }
    longest
}

/// `x-ratelimit-reset`: seconds (possibly fractional), a Unix time in seconds, or a
/// duration such as `1m30s` / `250ms`.
pub(crate) fn parse_reset(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(n) = v.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        if n >= EPOCH_THRESHOLD {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(n);
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
        return Some(Duration::from_secs_f64(n));
    }
    parse_go_duration(v)
}

/// `1h2m3.5s`, `250ms`, `6m0s` (the form some providers send).
fn parse_go_duration(v: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = v;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(split);
        let n: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        total += n * match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = tail;
    }
    total
        .is_finite()
        .then(|| Duration::from_secs_f64(total.max(0.0)))
}

/// One IETF `RateLimit` field value: the longest `t` among list members with `r=0`.
fn ietf_exhausted(v: &str) -> Option<Duration> {
    let mut out: Option<Duration> = None;
    for member in v.split(',') {
        let mut r = None;
        let mut t = None;
        for param in member.split(';').skip(1) {
            let Some((k, val)) = param.trim().split_once('=') else {
                continue;
            };
            match k.trim() {
                "r" => r = val.trim().parse::<u64>().ok(),
                "t" => t = val.trim().parse::<u64>().ok(),
                _ => {}
            }
        }
        if r == Some(0)
            && let Some(t) = t
        {
            let d = Duration::from_secs(t);
            out = Some(out.map_or(d, |o| o.max(d)));
        }
    }
    out
}

/// Seconds for a `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn retry_after_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let h = headers(&[("retry-after", &later)]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        let h = headers(&[("retry-after", &past)]);
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        let h = headers(&[("retry-after", "soon")]);
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn learns_only_from_exhaustion_signals() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // Retry-After counts on 429/503 only.
        let h = headers(&[("retry-after", "5")]);
        assert_eq!(learn(429, &h, now), Some(Duration::from_secs(5)));
        assert_eq!(learn(503, &h, now), Some(Duration::from_secs(5)));
        assert_eq!(learn(200, &h, now), None);
        // Remaining 0 with a delta or an epoch reset, on any status.
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "3")]);
        assert_eq!(learn(200, &h, now), Some(Duration::from_secs(3)));
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000042"),
        ]);
        assert_eq!(learn(200, &h, now), Some(Duration::from_secs(42)));
        let h = headers(&[("x-ratelimit-remaining", "4"), ("x-ratelimit-reset", "3")]);
        assert_eq!(learn(200, &h, now), None);
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1m30s"),
        ]);
        assert_eq!(learn(200, &h, now), Some(Duration::from_secs(90)));
        // IETF RateLimit.
        let h = headers(&[("ratelimit", "\"day\";r=10;t=600, \"burst\";r=0;t=2")]);
        assert_eq!(learn(200, &h, now), Some(Duration::from_secs(2)));
        let h = headers(&[("ratelimit", "\"day\";r=10;t=600")]);
        assert_eq!(learn(200, &h, now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_runs_until_reset_and_is_capped() {
        let b = ProviderBackoff::new();
        assert_eq!(b.remaining(), None);
        assert!(b.extend(Duration::from_secs(10), Duration::from_secs(4)));
        assert_eq!(b.remaining(), Some(Duration::from_secs(4)));
        // A shorter signal does not shorten it.
        assert!(!b.extend(Duration::from_secs(1), Duration::from_secs(60)));
        tokio::time::advance(Duration::from_millis(3_500)).await;
        assert_eq!(b.remaining(), Some(Duration::from_millis(500)));
        assert_eq!(retry_after_secs(Duration::from_millis(500)), 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.remaining(), None);
    }
}
