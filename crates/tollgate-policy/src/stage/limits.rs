//! Limits stage: has this request room under every rate limit of its API?
//!
//! Runs after access, only for requests allowed so far that matched an API
//! with `limits`. All limits of the API are decided together by the shared
//! [`LocalStore`] (all-or-nothing: a request refused by one limit consumes
//! none of the others). A CONNECT tunnel counts as one request. A refused
//! request is answered 429 `rate_limited` naming the API and the limit, with
//! `Retry-After` and the IETF `RateLimit` fields; in report mode it goes ahead
//! and the refusal is recorded.
//!
//! Counter keys are `<api>:<limit>:<scope>`, where scope is `-` for `by: api`,
//! the consumer name for `by: consumer`, the index of the matched allow rule
//! for `by: endpoint` (`*` when the API has no allow rules, for CONNECT, and
//! for a request no rule matched in report mode) and, for `by: header:<name>`,
//! a 64-bit FNV-1a hash of the header's first value in hex (`-` when the header
//! is absent), so header values (often credentials) never land in keys.
//! Keys never contain the raw path, so their number is bounded by the config
//! (and, for headers, by the values callers send).

use std::fmt::Write as _;
use std::sync::Arc;

use http::HeaderName;
use tollgate_config::{Config, LimitAlgorithm, LimitBy};
use tollgate_state::{Decision, LimitRequest, LimitSpec, LocalStore, Window};

use crate::error::{ErrorCode, GatewayError};
use crate::pipeline::PathError;
use crate::request::RequestInfo;
use crate::stage::Ctx;

const STAGE: &str = "limits";

/// One limit's decision for one request, with what the `RateLimit` fields need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitResult {
    /// The limit's name from config.
    pub name: Arc<str>,
    /// Quota for `RateLimit-Policy` `q`: `requests`, or the burst for GCRA.
    pub quota: u64,
    /// Window for `RateLimit-Policy` `w`, in whole seconds (at least 1): `per`, or for GCRA the
    /// time to refill a whole burst.
    pub window_secs: u64,
    pub decision: Decision,
    /// This limit is (one of) the reason(s) the request was refused.
    pub limited: bool,
}

/// The limits stage's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOutcome {
    /// Every limit of the API, in config order.
    pub results: Vec<LimitResult>,
    /// Every limit admitted the request (and each was charged).
    pub admitted: bool,
}

impl LimitOutcome {
    /// The limit whose `RateLimit` field is sent: a refusing limit if any, else the one with the
    /// lowest remaining quota (the first on ties).
    pub fn tightest(&self) -> Option<&LimitResult> {
        self.results
            .iter()
            .find(|r| r.limited)
            .or_else(|| self.results.iter().min_by_key(|r| r.decision.remaining))
    }

    /// `Retry-After` in whole seconds (rounded up, at least 1) when the request was refused.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if self.admitted {
            return None;
        }
        let ms = self
            .results
            .iter()
            .filter(|r| r.limited)
            .map(|r| r.decision.retry_after_ms)
            .max()
            .unwrap_or(0);
        Some(ms.div_ceil(1000).max(1))
    }
}

#[derive(Debug)]
enum By {
    Api,
    Consumer,
    Endpoint,
    Header(HeaderName),
}

#[derive(Debug)]
struct Compiled {
    name: Arc<str>,
    /// `<api>:<limit>:`; the scope is appended per request.
    key_prefix: String,
    spec: LimitSpec,
    by: By,
    quota: u64,
    window_secs: u64,
}

/// The compiled limits of every API (same index as `config.apis`).
#[derive(Debug, Default)]
pub(crate) struct Limits {
    apis: Vec<Box<[Compiled]>>,
}

fn fixed_window(per_ms: u128) -> Option<Window> {
    match per_ms {
        1_000 => Some(Window::Second),
        60_000 => Some(Window::Minute),
        3_600_000 => Some(Window::Hour),
        86_400_000 => Some(Window::Day),
        _ => None,
    }
}

fn secs_ceil(ms: u128) -> u64 {
    u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1)
}

impl Limits {
    pub(crate) fn compile(cfg: &Config, errs: &mut Vec<PathError>) -> Self {
        let mut apis = Vec::with_capacity(cfg.apis.len());
        for (i, api) in cfg.apis.iter().enumerate() {
            let mut list = Vec::with_capacity(api.limits.len());
            for (j, l) in api.limits.iter().enumerate() {
                let per_ms = l.per.get().as_millis();
                let mut bad = |key: &str, message: &str| {
                    errs.push(PathError {
                        path: format!("apis[{i}].limits[{j}].{key}"),
                        message: message.to_owned(),
                    });
                };
                if l.requests == 0 {
                    bad("requests", "must be at least 1");
                    continue;
                }
                if per_ms == 0 {
                    bad("per", "must be longer than 0");
                    continue;
                }
                let (spec, quota, window_secs) = match l.algorithm {
                    LimitAlgorithm::Fixed => {
                        let Some(window) = fixed_window(per_ms) else {
                            bad("per", "a fixed window must be exactly 1s, 1m, 1h or 1d");
                            continue;
                        };
                        let spec = LimitSpec::FixedWindow {
                            limit: l.requests,
                            window,
                        };
                        (spec, l.requests, secs_ceil(per_ms))
                    }
                    LimitAlgorithm::Sliding => {
                        let window_ms = u64::try_from(per_ms).unwrap_or(u64::MAX);
                        let spec = LimitSpec::Sliding {
                            limit: l.requests,
                            window_ms,
                        };
                        (spec, l.requests, secs_ceil(per_ms))
                    }
                    LimitAlgorithm::Gcra => {
                        let burst = l.burst.unwrap_or(l.requests).max(1);
                        // Precision loss only matters beyond 2^53 requests.
                        #[allow(clippy::cast_precision_loss)]
                        let rate_per_sec = l.requests as f64 / l.per.get().as_secs_f64();
                        let refill_ms =
                            per_ms.saturating_mul(u128::from(burst)) / u128::from(l.requests);
                        let spec = LimitSpec::Gcra {
                            rate_per_sec,
                            burst,
                        };
                        (spec, burst, secs_ceil(refill_ms))
                    }
                };
                let by = match &l.by {
                    LimitBy::Api => By::Api,
                    LimitBy::Consumer => By::Consumer,
                    LimitBy::Endpoint => By::Endpoint,
                    LimitBy::Header(h) => match HeaderName::from_bytes(h.as_bytes()) {
                        Ok(n) => By::Header(n),
                        Err(_) => {
                            bad("by", "not a valid header name");
                            continue;
                        }
                    },
                };
                list.push(Compiled {
                    name: Arc::from(l.name.as_str()),
                    key_prefix: format!("{}:{}:", api.name, l.name),
                    spec,
                    by,
                    quota,
                    window_secs,
                });
            }
            apis.push(list.into_boxed_slice());
        }
        Self { apis }
    }

    /// Decides and charges the API's limits. `None` when the API has none; otherwise the
    /// outcome, with the refusal (unless report mode softened it) as `Err`.
    pub(crate) fn check(
        &self,
        ctx: &mut Ctx,
        req: &RequestInfo<'_>,
        who: Who<'_>,
        store: &LocalStore,
    ) -> Option<(LimitOutcome, Result<(), GatewayError>)> {
        let list = self.apis.get(who.api).filter(|l| !l.is_empty())?;
        let reqs: Vec<LimitRequest> = list
            .iter()
            .map(|l| LimitRequest {
                key: key(l, req, &who),
                spec: l.spec,
                cost: 1,
            })
            .collect();
        let decisions = store.check_all(&reqs);
        let admitted = decisions.iter().all(|d| d.allowed);
        let results: Vec<LimitResult> = list
            .iter()
            .zip(decisions)
            .map(|(l, d)| LimitResult {
                name: l.name.clone(),
                quota: l.quota,
                window_secs: l.window_secs,
                decision: d,
                // Limits that did not refuse are reported as they stand with no retry time.
                limited: !d.allowed && (d.retry_after_ms > 0 || d.remaining == 0),
            })
            .collect();
        let outcome = LimitOutcome { results, admitted };
        if admitted {
            ctx.step(STAGE, crate::Verdict::Continue, || {
                let mut s = format!("within the limits of API {:?}:", who.api_name);
                for r in &outcome.results {
                    let _ = write!(s, " {} ({} left)", r.name, r.decision.remaining);
                }
                s
            });
            return Some((outcome, Ok(())));
        }
        let names: Vec<&str> = outcome
            .results
            .iter()
            .filter(|r| r.limited)
            .map(|r| &*r.name)
            .collect();
        let retry = outcome.retry_after_secs().unwrap_or(1);
        let detail = format!(
            "rate limit {:?} of API {:?} is exhausted; retry in {retry} s",
            names.join(", "),
            who.api_name
        );
        let verdict = ctx.refuse(
            STAGE,
            GatewayError::new(ErrorCode::RateLimited, detail),
            true,
            || {
                format!(
                    "limit {:?} of API {:?} refused the request (retry in {retry} s)",
                    names.join(", "),
                    who.api_name
                )
            },
        );
        Some((outcome, verdict))
    }
}

/// What the key of a request depends on besides the request itself.
pub(crate) struct Who<'a> {
    pub(crate) api: usize,
    pub(crate) api_name: &'a str,
    pub(crate) consumer: &'a str,
    /// Index of the matched allow rule, if one matched.
    pub(crate) rule: Option<usize>,
}

fn key(l: &Compiled, req: &RequestInfo<'_>, who: &Who<'_>) -> String {
    let mut k = String::with_capacity(l.key_prefix.len() + 17);
    k.push_str(&l.key_prefix);
    match &l.by {
        By::Api => k.push('-'),
        By::Consumer => k.push_str(who.consumer),
        By::Endpoint => match who.rule {
            Some(j) => {
                let _ = write!(k, "{j}");
            }
            None => k.push('*'),
        },
        By::Header(name) => match req.headers.get(name) {
            Some(v) => {
                let _ = write!(k, "{:016x}", fnv1a(v.as_bytes()));
            }
            None => k.push('-'),
        },
    }
    k
}

/// FNV-1a, 64 bit: stable across builds (counters may be persisted), cheap, and enough to keep
/// header values out of keys; it is not meant to resist a determined attacker.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
