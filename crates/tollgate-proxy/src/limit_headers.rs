//! The one place the rate-limit response fields are rendered, following
//! draft-ietf-httpapi-ratelimit-headers (structured-field form):
//!
//! - `RateLimit-Policy: "<name>";q=<quota>;w=<seconds>`, one list member per
//!   limit of the API, in config order;
//! - `RateLimit: "<name>";r=<remaining>;t=<seconds until reset>` for the
//!   tightest limit (the refusing one, else the lowest remaining);
//! - on refusals only, `Retry-After: <seconds>` (rounded up, at least 1).
//!
//! Fields are appended, so an upstream's own `RateLimit` fields (about the
//! provider's limits) reach the client too, as further list members.

use std::fmt::Write as _;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use tollgate_policy::LimitOutcome;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Writes `s` as a structured-field string (limit names are already restricted to letters,
/// digits, `_`, `.` and `-`; escaping keeps the field valid regardless).
fn sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        }
    }
    out.push('"');
}

/// The `RateLimit-Policy` and `RateLimit` values for an outcome (`None` when it has no limits).
pub fn render(o: &LimitOutcome) -> Option<(String, String)> {
    let tight = o.tightest()?;
    let mut policy = String::with_capacity(32 * o.results.len());
    for (i, r) in o.results.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
        }
        sf_string(&mut policy, &r.name);
        let _ = write!(policy, ";q={};w={}", r.quota, r.window_secs);
    }
    let mut limit = String::with_capacity(32);
    sf_string(&mut limit, &tight.name);
    let _ = write!(
        limit,
        ";r={};t={}",
        tight.decision.remaining,
        tight.decision.reset_after_ms.div_ceil(1000)
    );
    Some((policy, limit))
}

/// Adds the fields to a response. `refused` adds `Retry-After` (only for the 429 itself, not for
/// a request that report mode let through).
pub fn apply(headers: &mut HeaderMap, o: &LimitOutcome, refused: bool) {
    let Some((policy, limit)) = render(o) else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.append(RATELIMIT_POLICY.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&limit) {
        headers.append(RATELIMIT.clone(), v);
    }
    if refused && let Some(secs) = o.retry_after_secs() {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tollgate_policy::{Decision, LimitResult};

    use super::*;

    fn result(
        name: &str,
        quota: u64,
        w: u64,
        d: (bool, u64, u64, u64),
        limited: bool,
    ) -> LimitResult {
        LimitResult {
            name: Arc::from(name),
            quota,
            window_secs: w,
            decision: Decision {
                allowed: d.0,
                limit: quota,
                remaining: d.1,
                reset_after_ms: d.2,
                retry_after_ms: d.3,
            },
            limited,
        }
    }

    #[test]
    fn admitted_request_names_the_tightest_limit() {
        let o = LimitOutcome {
            results: vec![
                result("hourly", 5000, 3600, (true, 4000, 1_800_000, 0), false),
                result("burst", 3, 60, (true, 1, 59_001, 0), false),
            ],
            admitted: true,
        };
        let mut h = HeaderMap::new();
        apply(&mut h, &o, false);
        assert_eq!(
            h["ratelimit-policy"],
            "\"hourly\";q=5000;w=3600, \"burst\";q=3;w=60"
        );
        assert_eq!(h["ratelimit"], "\"burst\";r=1;t=60");
        assert!(!h.contains_key("retry-after"));
    }

    #[test]
    fn refusal_adds_retry_after_rounded_up() {
        let o = LimitOutcome {
            results: vec![
                result("daily", 10, 86400, (false, 9, 3_000_000, 0), false),
                result("burst", 3, 60, (false, 0, 41_200, 41_200), true),
            ],
            admitted: false,
        };
        let mut h = HeaderMap::new();
        h.append(
            RATELIMIT.clone(),
            HeaderValue::from_static("\"upstream\";r=5;t=1"),
        );
        apply(&mut h, &o, true);
        let limits: Vec<_> = h.get_all("ratelimit").iter().collect();
        assert_eq!(limits, ["\"upstream\";r=5;t=1", "\"burst\";r=0;t=42"]);
        assert_eq!(h["retry-after"], "42");
        // Report mode: the same outcome on a forwarded response has no Retry-After.
        let mut h = HeaderMap::new();
        apply(&mut h, &o, false);
        assert!(!h.contains_key("retry-after"));
        // A refusal whose retry time is under a second still says at least 1.
        let o = LimitOutcome {
            results: vec![result("g", 2, 1, (false, 0, 300, 120), true)],
            admitted: false,
        };
        assert_eq!(o.retry_after_secs(), Some(1));
        let mut s = String::new();
        sf_string(&mut s, "a\"b\\c\n");
        assert_eq!(s, "\"a\\\"b\\\\c\"");
        assert_eq!(
            render(&LimitOutcome {
                results: vec![],
                admitted: true
            }),
            None
        );
    }
}
