//! Response-based cost: charges limits with `cost: { response_bytes: true }` or
//! `cost: { response_json: <path> }` once the response has been seen.
//!
//! Admission charged such a limit only its `reserve` (default 1), so a request goes ahead
//! while the limit has room for it. The [`Meter`] rides on the response body
//! ([`crate::body::ProxyBody::with_meter`]): it counts the bytes passed to the client and, for
//! `response_json`, keeps a copy of the body up to [`JSON_BUFFER`] bytes (the client still gets
//! it streamed). When the body ends (or is dropped: client gone, upstream failed) the meter
//! charges each limit the response's cost minus the reserve, to the same key and store:
//!
//! - local limits synchronously (no await, one lock);
//! - global limits in a spawned task (Redis is never awaited on the response path); while the
//!   shared store is degraded, locally at this instance's fair share, like admission.
//!
//! The charge may exceed what is left: it is then clamped so the counter reaches the limit
//! exactly (stores only charge what fits), and later requests are refused with 429
//! `rate_limited` until the window frees. A cost below the reserve is not refunded.
//! Nothing here refuses the current request: its response is already under way.

use std::sync::Arc;

use bytes::Bytes;
use tollgate_config::LimitScope;
use tollgate_policy::{LimitPlan, LimitRequest, ResponseCost};
use tollgate_state::LocalStore;

use crate::state::Gateway;

/// The most of a response body kept for `response_json`; a longer body charges `default`.
pub const JSON_BUFFER: usize = 1024 * 1024;

struct Charge {
    limit: Arc<str>,
    request: LimitRequest,
    scope: LimitScope,
    cost: ResponseCost,
}

/// Measures one response and charges its cost when dropped.
pub struct Meter {
    gw: Arc<Gateway>,
    api: Arc<str>,
    charges: Vec<Charge>,
    bytes: u64,
    /// The body so far, when some limit reads the JSON.
    json: Option<Vec<u8>>,
    /// The body was longer than [`JSON_BUFFER`].
    overflow: bool,
    /// The body reached its end.
    ended: bool,
    /// Attached to a response body on its way to the client. A request that never got that
    /// far (refused after admission, upstream failure, a CONNECT tunnel) is charged nothing
    /// beyond its reserve.
    attached: bool,
}

impl Meter {
    /// A meter for the plan's response-cost limits; `None` when it has none.
    pub fn for_plan(gw: &Arc<Gateway>, plan: &LimitPlan) -> Option<Box<Meter>> {
        let charges: Vec<Charge> = plan
            .limits
            .iter()
            .filter_map(|l| {
                l.response_cost.as_ref().map(|c| Charge {
                    limit: l.name.clone(),
                    request: l.request.clone(),
                    scope: l.scope,
                    cost: c.clone(),
                })
            })
            .collect();
        if charges.is_empty() {
            return None;
        }
        let json = charges
            .iter()
            .any(|c| matches!(c.cost, ResponseCost::Json { .. }))
            .then(Vec::new);
        Some(Box::new(Meter {
            gw: gw.clone(),
            api: plan.api.clone(),
            charges,
            bytes: 0,
            json,
            overflow: false,
            ended: false,
            attached: false,
        }))
    }

    /// Marks the meter as measuring a response body (see `attached`).
    pub fn attach(&mut self) {
        self.attached = true;
    }

    /// A chunk of the body passed to the client.
    pub fn data(&mut self, d: &Bytes) {
        self.bytes += d.len() as u64;
        if let Some(buf) = &mut self.json
            && !self.overflow
        {
            if buf.len() + d.len() > JSON_BUFFER {
                self.overflow = true;
                *buf = Vec::new();
            } else {
                buf.extend_from_slice(d);
            }
        }
    }

    /// The body reached its end.
    pub fn end(&mut self) {
        self.ended = true;
    }

    fn settle(&mut self) {
        if !self.attached {
            return;
        }
        let body = self.json.take().unwrap_or_default();
        let complete = self.ended && !self.overflow;
        let mut global: Vec<(Arc<str>, LimitRequest)> = Vec::new();
        for c in self.charges.drain(..) {
            let units = c.cost.units(self.bytes, &body, complete);
            let extra = units.saturating_sub(c.request.cost);
            if extra == 0 {
                continue;
            }
            let req = LimitRequest {
                cost: extra,
                ..c.request
            };
            match c.scope {
                LimitScope::Local => {
                    let (charged, over) = charge_clamped(&self.gw.limits, req);
                    self.gw
                        .metrics
                        .limit_response_cost(&self.api, &c.limit, charged, over);
                }
                LimitScope::Global => global.push((c.limit, req)),
            }
        }
        if global.is_empty() {
            return;
        }
        let store = self.gw.global.load_full();
        let degraded = store.as_ref().is_none_or(|g| g.is_degraded());
        if degraded {
            let share = store.as_ref().map_or(1, |g| g.instances());
            for (limit, r) in global {
                let (charged, over) =
                    charge_clamped(&self.gw.limits, crate::limit_store::fair_share(&r, share));
                self.gw
                    .metrics
                    .limit_response_cost(&self.api, &limit, charged, over);
            }
            return;
        }
        let Some(store) = store else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (metrics, api) = (self.gw.metrics.clone(), self.api.clone());
        rt.spawn(async move {
            for (limit, r) in global {
                // One call per limit: each is clamped on its own.
                match store.check_all(std::slice::from_ref(&r)).await {
                    Ok(d) => {
                        let (mut charged, mut over) = (r.cost, 0);
                        if let Some(d) = d.first()
                            && !d.allowed
                        {
                            (charged, over) = (0, r.cost);
                            if d.remaining > 0 {
                                let rest = LimitRequest {
                                    cost: d.remaining.min(r.cost),
                                    ..r.clone()
                                };
                                if let Ok(d2) = store.check_all(std::slice::from_ref(&rest)).await
                                    && d2.first().is_some_and(|d| d.allowed)
                                {
                                    (charged, over) = (rest.cost, r.cost - rest.cost);
                                }
                            }
                        }
                        metrics.limit_response_cost(&api, &limit, charged, over);
                    }
                    Err(e) => {
                        tracing::warn!(limit.key = %r.key, error = %e, "response cost not charged: the shared limit store failed");
                    }
                }
            }
        });
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Charges `req` to a local counter; when it does not fit whole, charges what is left.
/// Returns the units charged and those beyond the limit.
fn charge_clamped(store: &LocalStore, req: LimitRequest) -> (u64, u64) {
    let cost = req.cost;
    let d = store.check_all(std::slice::from_ref(&req));
    match d.first() {
        Some(d) if !d.allowed => {
            if d.remaining == 0 {
                return (0, cost);
            }
            let rest = LimitRequest {
                cost: d.remaining.min(cost),
                ..req
            };
            let got = store.check_all(std::slice::from_ref(&rest));
            if got.first().is_some_and(|d| d.allowed) {
                (rest.cost, cost - rest.cost)
            } else {
                (0, cost)
            }
        }
        _ => (cost, 0),
    }
}
