//! Waiting for capacity: the admission step for limits with `on_limit: { queue }` and for
//! per-API `concurrency` limits. The queues themselves are [`crate::queue`] and
//! [`crate::concurrency`]; this module keeps them across reloads (by API and limit name), runs
//! the wait-and-recheck loop, and records the metrics.
//!
//! Rate limits: a request refused (429 `rate_limited`) only by limits with `on_limit: { queue }`
//! joins the queue of the refusing limit with the longest retry time and waits; when released it
//! is checked again (charging nothing unless admitted). While anyone waits for a counter, newcomers
//! for that counter queue behind them instead of taking the capacity they wait for, so priority
//! order holds. A refusal by any `reject` limit, a full queue, or a wait beyond the limit's
//! `queue` time answers 429 `rate_limited` (the last refusal's `Retry-After` and `RateLimit`
//! fields). In report mode nothing waits.
//!
//! Concurrency: see [`crate::concurrency`]; the slot is taken after the rate limits admitted the
//! request (a request waiting for quota holds no slot). A refusal is 429 `concurrency_limited`
//! with `Retry-After: 1` (in report mode only recorded). The slot is held by [`Slot`] until the
//! response's completion is dropped (body end, tunnel close, or client gone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tollgate_config::Config;
use tollgate_config::traffic::OnLimit;
use tollgate_policy::{ErrorCode, GatewayError, LimitPlan, LimitVerdict};
use tollgate_telemetry::{GaugeHandle, Metrics};

use crate::admission::{self, Admitted};
use crate::concurrency::{Bounds, ConcurrencyLimiter, Permit, Refusal};
use crate::queue::{QueueFull, WaitQueue, Waiter, Who};
use crate::state::Gateway;

/// Wait queues by (API name, limit name).
type Queues = HashMap<(Arc<str>, Arc<str>), Arc<WaitQueue>>;

/// The wait queues and concurrency limiters, by API (and limit) name; kept across reloads so
/// waiters and in-flight counts survive them.
#[derive(Debug, Default)]
pub struct Waiting {
    queues: Mutex<Queues>,
    limiters: Mutex<HashMap<Arc<str>, Arc<ConcurrencyLimiter>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Maps are only inserted into; a panic cannot leave one half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Waiting {
    /// The queue of `api`'s limit `limit`, created on first use; `max` is the current bound.
    pub fn queue(&self, api: &str, limit: &str, max: usize) -> Arc<WaitQueue> {
        let mut g = lock(&self.queues);
        let q = g
            .entry((Arc::from(api), Arc::from(limit)))
            .or_insert_with(|| WaitQueue::new(max))
            .clone();
        q.set_max(max);
        q
    }

    /// Requests waiting in `api`'s limit `limit` (0 when it never queued).
    pub fn queue_depth(&self, api: &str, limit: &str) -> usize {
        let g = lock(&self.queues);
        g.iter()
            .find(|((a, l), _)| &**a == api && &**l == limit)
            .map_or(0, |(_, q)| q.depth())
    }

    /// The concurrency limiter of `api`, created on first use, with the current bounds.
    pub fn limiter(&self, api: &str, bounds: Bounds) -> Arc<ConcurrencyLimiter> {
        let mut g = lock(&self.limiters);
        if let Some(l) = g.get(api) {
            l.set_bounds(bounds);
            return l.clone();
        }
        let l = ConcurrencyLimiter::new(bounds);
        g.insert(Arc::from(api), l.clone());
        l
    }

    /// Requests in flight and waiting for `api`'s concurrency limit.
    pub fn concurrency(&self, api: &str) -> Option<(u32, usize)> {
        let g = lock(&self.limiters);
        g.get(api).map(|l| (l.in_flight(), l.queued()))
    }
}

/// The consumer's queue priority from config (0 for unknown callers).
pub fn priority(cfg: &Config, consumer: &str) -> i32 {
    cfg.consumers
        .iter()
        .find(|c| c.name == consumer)
        .map_or(0, |c| c.priority)
}

/// A place in a limit's queue with its metrics: the depth gauge goes down and the way the
/// wait ended is counted when it is dropped (`cancelled` unless set: the client went away).
struct Queued {
    waiter: Waiter,
    depth: GaugeHandle,
    metrics: Arc<Metrics>,
    api: Arc<str>,
    limit: Arc<str>,
    start: Instant,
    result: Option<&'static str>,
    /// The wait's span, when the request is traced (spans.rs).
    span: Option<crate::spans::QueueSpan>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.depth.dec();
        let result = self.result.unwrap_or("cancelled");
        if let Some(s) = self.span.take() {
            s.end(&self.api, &self.limit, result);
        }
        self.metrics.limit_queued(&self.api, &self.limit, result);
        self.metrics
            .limit_queue_wait(&self.api, self.start.elapsed());
    }
}

/// The counter a planned limit waits for: its key, or its share group's.
fn wait_key(plan: &LimitPlan, j: usize) -> Arc<str> {
    let r = &plan.limits[j].request;
    match &r.shares {
        Some(s) => match s.spec.groups.get(s.group) {
            Some(g) => Arc::from(tollgate_state::group_key(&r.key, &g.name)),
            None => Arc::from(r.key.as_str()),
        },
        None => Arc::from(r.key.as_str()),
    }
}

/// Charges `plan` like [`admission::admit`]; a refusal by limits that all queue waits in the
/// queue (see the module docs) and is checked again when released.
pub async fn admit_or_wait(
    gw: &Gateway,
    cfg: &Config,
    plan: &LimitPlan,
    consumer: &str,
    trace: Option<&tollgate_trace::ChildCtx>,
) -> Admitted {
    let on_limit = |j: usize| -> OnLimit {
        cfg.apis
            .get(plan.api_index)
            .and_then(|a| a.limits.get(j))
            .map(|l| l.on_limit)
            .unwrap_or_default()
    };
    let queueing: Vec<usize> = (0..plan.limits.len())
        .filter(|&j| on_limit(j).queue().is_some())
        .collect();
    if queueing.is_empty() || plan.report_mode {
        return admission::admit(gw, plan).await;
    }
    let who = || Who {
        consumer: Arc::from(consumer),
        priority: priority(cfg, consumer),
    };
    let join = |j: usize, ready_in: Option<Duration>| -> Result<Queued, QueueFull> {
        let spec = on_limit(j).queue().copied();
        let max = spec.map_or(0, |q| q.max_queue as usize);
        let name = plan.limits[j].name.clone();
        let q = gw.waiting.queue(&plan.api, &name, max);
        // The gauge goes up first, so it never shows less than the queue holds.
        let depth = gw.metrics.limit_queue_depth(&plan.api, &name);
        depth.inc();
        let waiter = match q.join(who(), wait_key(plan, j), ready_in) {
            Ok(w) => w,
            Err(e) => {
                depth.dec();
                return Err(e);
            }
        };
        Ok(Queued {
            waiter,
            depth,
            metrics: gw.metrics.clone(),
            api: plan.api.clone(),
            limit: name,
            start: Instant::now(),
            result: None,
            span: crate::spans::QueueSpan::start(trace),
        })
    };
    let deadline_of = |j: usize| {
        let wait = on_limit(j)
            .queue()
            .map_or(Duration::ZERO, |q| q.queue.get());
        Instant::now() + wait
    };

    // Newcomers queue behind anyone already waiting for one of these counters.
    let mut last: Option<Admitted> = None;
    let mut place = None;
    for &j in &queueing {
        let max = on_limit(j).queue().map_or(0, |q| q.max_queue as usize);
        let q = gw.waiting.queue(&plan.api, &plan.limits[j].name, max);
        if q.has_waiters(&wait_key(plan, j)) {
            match join(j, None) {
                Ok(w) => place = Some((w, deadline_of(j))),
                Err(QueueFull) => {
                    gw.metrics
                        .limit_queued(&plan.api, &plan.limits[j].name, "full");
                    // Nobody may overtake the waiters: answer as the limit would.
                    return queue_refusal(plan, &plan.limits[j].name, "its wait queue is full");
                }
            }
            break;
        }
    }
    let (mut queued, deadline) = match place {
        Some(p) => p,
        None => {
            let first = admission::admit(gw, plan).await;
            let Some(j) = queue_for(&first, plan, &on_limit) else {
                return first;
            };
            let retry = retry_of(&first);
            match join(j, Some(retry)) {
                Ok(w) => {
                    last = Some(first);
                    (w, deadline_of(j))
                }
                Err(QueueFull) => {
                    gw.metrics
                        .limit_queued(&plan.api, &plan.limits[j].name, "full");
                    return first;
                }
            }
        }
    };
    loop {
        if queued.waiter.released(deadline).await.is_err() {
            queued.result = Some("timeout");
            return match last {
                Some(a) => a,
                None => queue_refusal(plan, &queued.limit, "the wait in its queue timed out"),
            };
        }
        let a = admission::admit(gw, plan).await;
        if matches!(a.verdict, LimitVerdict::Admitted) {
            queued.result = Some("admitted");
            return a;
        }
        if queue_for(&a, plan, &on_limit).is_none() {
            // Refused by a `reject` limit, or the store failed: no point waiting on.
            queued.result = Some("refused");
            return a;
        }
        queued.waiter.refused(retry_of(&a));
        last = Some(a);
    }
}

/// The queue to wait in after a refusal: `None` unless the refusal is `rate_limited` by limits
/// that all queue; then the refusing limit with the longest retry time.
fn queue_for(
    a: &Admitted,
    plan: &LimitPlan,
    on_limit: &impl Fn(usize) -> OnLimit,
) -> Option<usize> {
    let LimitVerdict::Refused(e) = &a.verdict else {
        return None;
    };
    if e.code != ErrorCode::RateLimited {
        return None;
    }
    let o = a.outcome.as_ref()?;
    let refusing: Vec<usize> = (0..o.results.len().min(plan.limits.len()))
        .filter(|&j| o.results[j].limited)
        .collect();
    if refusing.is_empty() || refusing.iter().any(|&j| on_limit(j).queue().is_none()) {
        return None;
    }
    refusing
        .into_iter()
        .max_by_key(|&j| o.results[j].decision.retry_after_ms)
}

/// When the refused limits may have room again (at least 1 ms).
fn retry_of(a: &Admitted) -> Duration {
    let ms = a
        .outcome
        .as_ref()
        .map(|o| {
            o.results
                .iter()
                .filter(|r| r.limited)
                .map(|r| r.decision.retry_after_ms)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    Duration::from_millis(ms.max(1))
}

/// A 429 `rate_limited` for a request that never got a decision of its own (it queued behind
/// others and then gave up or found the queue full).
fn queue_refusal(plan: &LimitPlan, limit: &str, why: &str) -> Admitted {
    Admitted {
        outcome: None,
        charged: admission::Charged::default(),
        verdict: LimitVerdict::Refused(GatewayError::new(
            ErrorCode::RateLimited,
            format!(
                "rate limit {limit:?} of API {:?} is exhausted and {why}",
                plan.api
            ),
        )),
    }
}

/// A request's concurrency slot; dropping it frees the slot and lowers the in-flight gauge.
#[derive(Debug)]
pub struct Slot {
    _permit: Permit,
    in_flight: GaugeHandle,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// A concurrency refusal: the 429 `concurrency_limited` error, and whether report mode lets
/// the request go ahead anyway (then it holds no slot).
#[derive(Debug)]
pub struct SlotRefusal {
    pub error: GatewayError,
    pub report: bool,
}

/// Takes a concurrency slot of API `api` for `consumer` if the API has a `concurrency` limit.
/// `Ok(None)`: no limit. In report mode nothing waits.
pub async fn acquire_slot(
    gw: &Gateway,
    cfg: &Config,
    api: &str,
    consumer: &str,
    trace: Option<&tollgate_trace::ChildCtx>,
) -> Result<Option<Slot>, SlotRefusal> {
    let Some(api_cfg) = cfg.apis.iter().find(|a| a.name == api) else {
        return Ok(None);
    };
    let Some(c) = api_cfg.concurrency else {
        return Ok(None);
    };
    let report = cfg.report_only || api_cfg.mode == tollgate_config::Mode::Report;
    let queue = c.on_limit.queue();
    let bounds = Bounds {
        max: c.max,
        per_consumer: c.per_consumer,
        max_queue: queue.map_or(0, |q| q.max_queue as usize),
    };
    let limiter = gw.waiting.limiter(api, bounds);
    let wait = match queue {
        Some(q) if !report => q.queue.get(),
        _ => Duration::ZERO,
    };
    let who = Who {
        consumer: Arc::from(consumer),
        priority: priority(cfg, consumer),
    };
    let start = Instant::now();
    // Only a request that has to wait shows in the depth gauge and the wait metrics.
    let mut waited = WaitRecord {
        gw,
        api,
        depth: None,
        start,
        result: None,
        span: None,
    };
    let fits_now = limiter.has_room(&who.consumer);
    if !fits_now && queue.is_some() && !report {
        let d = gw.metrics.concurrency_queue_depth(api);
        d.inc();
        waited.depth = Some(d);
        waited.span = crate::spans::QueueSpan::start(trace);
    }
    let got = limiter.acquire(who, start + wait).await;
    let refusal = match got {
        Ok(permit) => {
            if waited.depth.is_some() {
                waited.result = Some("admitted");
            }
            let in_flight = gw.metrics.concurrency_in_flight(api);
            in_flight.inc();
            return Ok(Some(Slot {
                _permit: permit,
                in_flight,
            }));
        }
        Err(r) => r,
    };
    let why = match refusal {
        Refusal::Full => "is full",
        Refusal::QueueFull => {
            waited.result = Some("full");
            "is full and so is its wait queue"
        }
        Refusal::TimedOut => {
            waited.result = Some("timeout");
            "stayed full for the whole wait"
        }
    };
    let mut bound = Vec::new();
    if let Some(m) = c.max {
        bound.push(format!("{m} in flight"));
    }
    if let Some(p) = c.per_consumer {
        bound.push(format!("{p} per consumer"));
    }
    Err(SlotRefusal {
        error: GatewayError::new(
            ErrorCode::ConcurrencyLimited,
            format!(
                "the concurrency limit of API {api:?} ({}) {why}",
                bound.join(", ")
            ),
        ),
        report,
    })
}

/// Metrics of one wait for a concurrency slot, recorded when dropped (`cancelled` unless set).
struct WaitRecord<'a> {
    gw: &'a Gateway,
    api: &'a str,
    depth: Option<GaugeHandle>,
    start: Instant,
    result: Option<&'static str>,
    span: Option<crate::spans::QueueSpan>,
}

impl Drop for WaitRecord<'_> {
    fn drop(&mut self) {
        let Some(d) = self.depth.take() else { return };
        d.dec();
        let result = self.result.unwrap_or("cancelled");
        if let Some(s) = self.span.take() {
            s.end(self.api, "concurrency", result);
        }
        self.gw.metrics.concurrency_queued(self.api, result);
        self.gw
            .metrics
            .limit_queue_wait(self.api, self.start.elapsed());
    }
}
