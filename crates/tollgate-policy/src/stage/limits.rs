//! Limits stage: which rate limits and quotas of its API apply to this request, and what it
//! costs against each.
//!
//! Runs after access, only for requests allowed so far that matched an API with `limits`. The
//! stage does not charge anything itself: it produces a [`LimitPlan`] (one [`PlannedLimit`] per
//! limit, with its counter key, algorithm, cost, `scope` and `on_store_failure`), and the
//! proxy's admission step (`tollgate-proxy/src/admission.rs`) charges it against the local and
//! shared (Redis) counters, all-or-nothing: a request refused by one limit consumes none of the
//! others. A CONNECT tunnel counts as one request. A refused request is answered 429
//! `rate_limited` naming the API and the limit, with `Retry-After` and the IETF `RateLimit`
//! fields ([`LimitPlan::verdict`] builds that error); in report mode it goes ahead and the
//! refusal is recorded.
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
use tollgate_config::{Config, LimitAlgorithm, LimitBy, LimitScope, OnStoreFailure};
use tollgate_state::{Decision, LimitRequest, LimitSpec, LocalStore, Window, Zone};

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

/// The admission step's answer for one request.
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

/// One limit to charge for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedLimit {
    pub name: Arc<str>,
    /// For `RateLimit-Policy` (see [`LimitResult::quota`]).
    pub quota: u64,
    pub window_secs: u64,
    pub scope: LimitScope,
    pub on_store_failure: OnStoreFailure,
    /// Key, algorithm and cost, ready for a store. For a limit whose cost is read from the
    /// response, `request.cost` is the `reserve` charged at admission.
    pub request: LimitRequest,
    /// The response's cost beyond the reserve is charged when the response ends.
    pub response_cost: Option<ResponseCost>,
}

/// A cost read from the response (`cost.response_bytes` / `cost.response_json`), charged to the
/// limit's key once the response body has ended (see docs/stages/limits.md, "Cost").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseCost {
    /// The bytes of the response body sent to the client.
    Bytes,
    /// The whole number at this path of the response JSON; `default` when absent.
    Json { path: Arc<[String]>, default: u64 },
}

impl ResponseCost {
    /// The response's cost: `bytes` sent, or the number found in `body` (the first bytes of
    /// the body when it was longer than the buffer: then `complete` is false).
    pub fn units(&self, bytes: u64, body: &[u8], complete: bool) -> u64 {
        match self {
            ResponseCost::Bytes => bytes,
            ResponseCost::Json { path, default } => {
                if !complete {
                    return *default;
                }
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
                    return *default;
                };
                let mut at = &v;
                for p in path.iter() {
                    match at.get(p.as_str()) {
                        Some(next) => at = next,
                        None => return *default,
                    }
                }
                match at {
                    serde_json::Value::Number(n) => n
                        .as_u64()
                        .or_else(|| {
                            // Saturating float→int is intended: 12.0 tokens is 12.
                            n.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64)
                        })
                        .unwrap_or(*default),
                    _ => *default,
                }
            }
        }
    }
}

/// Every limit of the request's API, in config order, and how a refusal is enforced.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitPlan {
    /// The API's name (for errors and metrics).
    pub api: Arc<str>,
    /// The API's index in the config.
    pub api_index: usize,
    /// Refusals are only reported (the API's `mode: report` or global `report_only`).
    pub report_mode: bool,
    pub limits: Vec<PlannedLimit>,
}

/// What the admission step should do with a decided plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitVerdict {
    /// Every limit admitted the request.
    Admitted,
    /// Refused, but report mode lets it through; the error is recorded.
    Reported(GatewayError),
    /// Refused: answer with this error (429 `rate_limited`).
    Refused(GatewayError),
}

impl LimitPlan {
    /// Whether any limit is kept in the shared store.
    pub fn has_global(&self) -> bool {
        self.limits.iter().any(|l| l.scope == LimitScope::Global)
    }

    /// Pairs each limit with its store decision (same order as `limits`).
    pub fn outcome(&self, decisions: &[Decision]) -> LimitOutcome {
        let admitted = decisions.len() == self.limits.len() && decisions.iter().all(|d| d.allowed);
        let results = self
            .limits
            .iter()
            .zip(decisions)
            .map(|(l, d)| LimitResult {
                name: l.name.clone(),
                quota: l.quota,
                window_secs: l.window_secs,
                decision: *d,
                // Limits that did not refuse are reported as they stand with no retry time.
                limited: !d.allowed && (d.retry_after_ms > 0 || d.remaining == 0),
            })
            .collect();
        LimitOutcome { results, admitted }
    }

    /// Decides every limit against one local store, ignoring `scope` (tests, and `tollgate
    /// explain` with `charge: false`, which only peeks).
    pub fn decide_local(&self, store: &LocalStore, charge: bool) -> LimitOutcome {
        let reqs: Vec<LimitRequest> = self.limits.iter().map(|l| l.request.clone()).collect();
        let decisions = if charge {
            store.check_all(&reqs)
        } else {
            store.peek_all(&reqs)
        };
        let mut o = self.outcome(&decisions);
        if !charge {
            // A peek charges nothing: a limit that would admit this request is not "limited".
            o.admitted = decisions.iter().all(|d| d.allowed);
        }
        o
    }

    /// The verdict for an outcome: admitted, or the `rate_limited` error naming the refusing
    /// limit(s) (never a header value), enforced or only reported.
    pub fn verdict(&self, o: &LimitOutcome) -> LimitVerdict {
        if o.admitted {
            return LimitVerdict::Admitted;
        }
        let names: Vec<&str> = o
            .results
            .iter()
            .filter(|r| r.limited)
            .map(|r| &*r.name)
            .collect();
        let retry = o.retry_after_secs().unwrap_or(1);
        let detail = format!(
            "rate limit {:?} of API {:?} is exhausted; retry in {retry} s",
            names.join(", "),
            self.api
        );
        let err = GatewayError::new(ErrorCode::RateLimited, detail);
        if self.report_mode {
            LimitVerdict::Reported(err)
        } else {
            LimitVerdict::Refused(err)
        }
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
    scope: LimitScope,
    on_store_failure: OnStoreFailure,
    /// Read the cost from this header (else 1).
    cost_header: Option<HeaderName>,
    /// Cost read from the response; the request is charged `reserve` at admission.
    response_cost: Option<ResponseCost>,
    reserve: u64,
    /// Guaranteed shares by consumer (`shares`), see [`super::shares`].
    shares: Option<super::shares::CompiledShares>,
}

/// One configured limit, as the admin API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitInfo {
    pub api: Arc<str>,
    pub name: Arc<str>,
    /// `<api>:<limit>:`: every counter key of this limit starts with it.
    pub key_prefix: String,
    pub spec: LimitSpec,
    pub quota: u64,
    pub window_secs: u64,
    pub scope: LimitScope,
    pub on_store_failure: OnStoreFailure,
    pub algorithm: LimitAlgorithm,
    pub per: tollgate_config::Per,
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

/// The zone of a limit's `time_zone` (a fixed offset or an IANA name).
fn zone_of(tz: &str) -> Result<Zone, String> {
    match tollgate_config::traffic::parse_time_zone(tz)? {
        tollgate_config::traffic::TimeZoneSetting::Offset(m) => Ok(Zone::Fixed(m)),
        tollgate_config::traffic::TimeZoneSetting::Iana(name) => Zone::named(&name),
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
                if l.per.is_month() && l.algorithm != LimitAlgorithm::Fixed {
                    bad("per", "`per: month` needs `algorithm: fixed`");
                    continue;
                }
                let (spec, quota, window_secs) = match l.algorithm {
                    LimitAlgorithm::Fixed => {
                        let zone = match l.time_zone.as_deref().map(zone_of) {
                            None => Zone::UTC,
                            Some(Ok(z)) => z,
                            Some(Err(m)) => {
                                bad("time_zone", &m);
                                continue;
                            }
                        };
                        let window = if l.per.is_month() {
                            Window::Month {
                                zone,
                                renewal_day: l.renewal_day.unwrap_or(1).clamp(1, 31),
                            }
                        } else if let Some(w) = fixed_window(per_ms) {
                            match w {
                                Window::Day if zone != Zone::UTC => Window::LocalDay { zone },
                                w => w,
                            }
                        } else {
                            bad(
                                "per",
                                "a fixed window must be exactly 1s, 1m, 1h, 1d or month",
                            );
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
                let cost_header = match l.cost.as_ref().and_then(|c| c.header.as_ref()) {
                    None => None,
                    Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                        Ok(n) => Some(n),
                        Err(_) => {
                            bad("cost.header", "not a valid header name");
                            continue;
                        }
                    },
                };
                let response_cost = l.cost.as_ref().and_then(|c| {
                    if c.response_bytes {
                        Some(ResponseCost::Bytes)
                    } else {
                        c.response_json.as_ref().map(|p| ResponseCost::Json {
                            path: p.split('.').map(str::to_owned).collect(),
                            default: c.default.unwrap_or(0),
                        })
                    }
                });
                let reserve = l.cost.as_ref().and_then(|c| c.reserve).unwrap_or(1).max(1);
                list.push(Compiled {
                    name: Arc::from(l.name.as_str()),
                    key_prefix: format!("{}:{}:", api.name, l.name),
                    spec,
                    by,
                    quota,
                    window_secs,
                    scope: l.scope,
                    on_store_failure: l.on_store_failure,
                    cost_header,
                    response_cost,
                    reserve,
                    shares: super::shares::CompiledShares::compile(l),
                });
            }
            apis.push(list.into_boxed_slice());
        }
        Self { apis }
    }

    /// Every limit of every API, for listings (admin API).
    pub(crate) fn catalog(&self, cfg: &Config) -> Vec<LimitInfo> {
        let mut out = Vec::new();
        for (api, list) in cfg.apis.iter().zip(&self.apis) {
            for (l, c) in api.limits.iter().zip(list.iter()) {
                out.push(LimitInfo {
                    api: Arc::from(api.name.as_str()),
                    name: c.name.clone(),
                    key_prefix: c.key_prefix.clone(),
                    spec: c.spec,
                    quota: c.quota,
                    window_secs: c.window_secs,
                    scope: c.scope,
                    on_store_failure: c.on_store_failure,
                    algorithm: l.algorithm,
                    per: l.per,
                });
            }
        }
        out
    }

    /// Whether the API has any limits.
    pub(crate) fn has_limits(&self, api: usize) -> bool {
        self.apis.get(api).is_some_and(|l| !l.is_empty())
    }

    /// Refuses a consumer that has no share of one of the API's limits (`default_share: deny`):
    /// 403 `consumer_not_allowed` naming the API and the limit (only recorded in report mode).
    pub(crate) fn check_shares(&self, ctx: &mut Ctx, who: &Who<'_>) -> Result<(), GatewayError> {
        let Some(list) = self.apis.get(who.api) else {
            return Ok(());
        };
        for l in list.iter() {
            let Some(s) = &l.shares else { continue };
            if s.of(who.consumer).is_some() {
                continue;
            }
            let detail = format!(
                "consumer {:?} has no share of limit {:?} of API {:?}",
                who.consumer, l.name, who.api_name
            );
            ctx.refuse(
                STAGE,
                GatewayError::new(ErrorCode::ConsumerNotAllowed, detail.clone()),
                true,
                || format!("{detail} (default_share: deny)"),
            )?;
        }
        Ok(())
    }

    /// The API's limits for this request, with keys and costs. `None` when it has none.
    pub(crate) fn plan(
        &self,
        ctx: &mut Ctx,
        req: &RequestInfo<'_>,
        who: Who<'_>,
    ) -> Option<LimitPlan> {
        let list = self.apis.get(who.api).filter(|l| !l.is_empty())?;
        let limits = list
            .iter()
            .map(|l| PlannedLimit {
                name: l.name.clone(),
                quota: l.quota,
                window_secs: l.window_secs,
                scope: l.scope,
                on_store_failure: l.on_store_failure,
                request: LimitRequest {
                    shares: l.shares.as_ref().and_then(|s| s.of(who.consumer)),
                    ..LimitRequest::new(key(l, req, &who), l.spec, cost(l, req))
                },
                response_cost: l.response_cost.clone(),
            })
            .collect();
        let plan = LimitPlan {
            api: Arc::from(who.api_name),
            api_index: who.api,
            report_mode: ctx.report_mode,
            limits,
        };
        ctx.step(STAGE, crate::Verdict::Continue, || {
            let mut s = format!("API {:?} has limits:", who.api_name);
            for l in &plan.limits {
                let scope = match l.scope {
                    LimitScope::Local => "local",
                    LimitScope::Global => "global",
                };
                let _ = write!(s, " {} ({scope}, cost {}", l.name, l.request.cost);
                s.push_str(match l.response_cost {
                    Some(ResponseCost::Bytes) => " + response bytes)",
                    Some(ResponseCost::Json { .. }) => " + response JSON)",
                    None => ")",
                });
            }
            s.push_str("; charged by the admission step");
            s
        });
        Some(plan)
    }
}

impl Limits {
    /// The plan of one compiled list's limits for a request known only by its consumer and
    /// headers: used for credential keys' own limits (credentials.rs), charged when the key is
    /// picked. `by: endpoint` counts as `*` there. `list` indexes this stage's lists; the plan
    /// carries `api_index` (the real API's index).
    pub(crate) fn plan_for(
        &self,
        list: usize,
        api_index: usize,
        api_name: &Arc<str>,
        consumer: &str,
        headers: &http::HeaderMap,
        report_mode: bool,
    ) -> Option<LimitPlan> {
        let entries = self.apis.get(list).filter(|l| !l.is_empty())?;
        let who = Who {
            api: api_index,
            api_name,
            consumer,
            rule: None,
        };
        let limits = entries
            .iter()
            .map(|l| {
                let cost = match &l.cost_header {
                    Some(h) => headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .filter(|&n| n >= 1)
                        .unwrap_or(1)
                        .min(l.quota.max(1)),
                    None => 1,
                };
                PlannedLimit {
                    name: l.name.clone(),
                    quota: l.quota,
                    window_secs: l.window_secs,
                    scope: l.scope,
                    on_store_failure: l.on_store_failure,
                    request: LimitRequest::new(key_with(l, headers, &who), l.spec, cost),
                    response_cost: None,
                }
            })
            .collect();
        Some(LimitPlan {
            api: api_name.clone(),
            api_index,
            report_mode,
            limits,
        })
    }
}

/// The request's cost: the `cost.header` value (whole number ≥ 1; missing or invalid → 1),
/// capped at the quota so a heavy request can still pass an empty window.
fn cost(l: &Compiled, req: &RequestInfo<'_>) -> u64 {
    if l.response_cost.is_some() {
        // The reserve; the rest is charged when the response ends.
        return l.reserve.min(l.quota.max(1));
    }
    let Some(h) = &l.cost_header else {
        return 1;
    };
    req.headers
        .get(h)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
        .min(l.quota.max(1))
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
    key_with(l, req.headers, who)
}

fn key_with(l: &Compiled, headers: &http::HeaderMap, who: &Who<'_>) -> String {
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
        By::Header(name) => match headers.get(name) {
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
