//! Admission: charges a request's [`LimitPlan`] (from the policy's limits stage) against the
//! counters, all-or-nothing, and says whether it may go ahead.
//!
//! `scope: local` limits are decided by the gateway's in-process [`LocalStore`] (synchronous,
//! no await on the fast path). `scope: global` limits are decided by one Redis script call for
//! all global limits of the API, bounded by `state.redis.timeout`. A request with both kinds is
//! decided in this order, so that a refusal anywhere charges nothing anywhere:
//!
//! 1. **peek** the local limits (charges nothing); a refusal stops here;
//! 2. **charge** the global limits in Redis (atomic across them); a refusal stops here;
//! 3. **charge** the local limits.
//!
//! Between 1 and 3 a concurrent request may take the last local unit; then step 3 refuses
//! although step 2 has charged the global limits: those units are given back at once
//! ([`refund`], one Redis script call).
//!
//! A request the rate limits admitted can still be refused by a later step (its API's
//! concurrency limit). [`Admitted::charged`] records what admission charged and where, and the
//! handler gives it back with [`refund`], so a request refused by one limit consumes none of the
//! others. A refund goes to the same counters (the share group's, for a shared limit) and only
//! within the window that was charged; a Redis refund that fails is logged and lost (the
//! counter over-counts by that request until its window ends, never admits beyond a limit).
//!
//! When Redis does not answer (timeout, connection refused, script error) each global limit
//! follows its `on_store_failure`: if any is `closed` the request is refused with 503
//! `limit_store_unavailable`; otherwise the global limits are decided locally at this
//! instance's fair share (see [`crate::limit_store`]), together with the local limits in one
//! local decision.
//!
//! What the client sees when refused: 429 `rate_limited` with `Retry-After` and the
//! `RateLimit-Policy` / `RateLimit` fields (rendered by the handler through
//! [`crate::limit_headers`]), or 503 `limit_store_unavailable` (retry safe).
//!
//! Later steps (priority queueing, concurrency) plug in around [`admit`]: a request whose
//! verdict is `Refused` with code `rate_limited` may wait and call [`admit`] again.

use std::sync::Arc;

use tollgate_config::{LimitScope, OnStoreFailure};
use tollgate_policy::{
    Decision, ErrorCode, GatewayError, LimitOutcome, LimitPlan, LimitRequest, LimitVerdict,
};
use tollgate_state::LocalStore;

use crate::limit_store::GlobalStore;
use crate::state::Gateway;

/// The admission decision for one request.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Per-limit decisions for the `RateLimit` fields; `None` when no decision could be made
    /// (a `closed` limit whose store is unavailable).
    pub outcome: Option<LimitOutcome>,
    pub verdict: LimitVerdict,
    /// What was charged, for [`refund`] when the request does not go ahead after all.
    pub charged: Charged,
}

/// The limit requests admission charged, by store. Empty when nothing was charged (a refusal
/// charges nothing).
#[derive(Debug, Clone, Default)]
pub struct Charged {
    /// Charged to the in-process store: local limits, and global limits decided locally at
    /// this instance's fair share while the shared store was unavailable.
    pub local: Vec<LimitRequest>,
    /// Charged in Redis.
    pub global: Vec<LimitRequest>,
}

impl Charged {
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.global.is_empty()
    }
}

/// Gives back what admission charged a request that then did not go ahead (see the module
/// docs): the local part at once, the Redis part with one script call bounded by the store's
/// timeout. A Redis failure is logged as a warning (those units stay charged).
pub async fn refund(gw: &Gateway, charged: Charged) {
    if charged.is_empty() {
        return;
    }
    tracing::debug!(
        limits.local = charged.local.len(),
        limits.global = charged.global.len(),
        "giving back the rate-limit units of a request that does not go ahead"
    );
    gw.limits.refund(&charged.local);
    if charged.global.is_empty() {
        return;
    }
    let store = gw.global.load_full();
    match store {
        Some(g) if g.is_degraded() => tracing::warn!(
            "rate-limit units of a refused request not given back: the shared limit store is degraded"
        ),
        Some(g) => {
            if let Err(e) = g.redis().refund(&charged.global).await {
                tracing::warn!(error = %e, "rate-limit units of a refused request not given back: the shared limit store failed");
            }
        }
        None => tracing::warn!(
            "rate-limit units of a refused request not given back: no shared limit store"
        ),
    }
}

/// Charges `plan` and returns the verdict. Records the per-limit metrics.
pub async fn admit(gw: &Gateway, plan: &LimitPlan) -> Admitted {
    let admitted = if plan.has_global() {
        let global = gw.global.load_full();
        admit_mixed(&gw.limits, global.as_ref(), plan).await
    } else {
        let reqs: Vec<LimitRequest> = plan.limits.iter().map(|l| l.request.clone()).collect();
        let decisions = gw.limits.check_all(&reqs);
        let charged = if decisions.iter().all(|d| d.allowed) {
            Charged {
                local: reqs,
                global: Vec::new(),
            }
        } else {
            Charged::default()
        };
        let o = plan.outcome(&decisions);
        Admitted {
            verdict: plan.verdict(&o),
            outcome: Some(o),
            charged,
        }
    };
    if let Some(o) = &admitted.outcome {
        for r in &o.results {
            // A refused request charged no limit: only the refusing ones are counted.
            if o.admitted || r.limited {
                gw.metrics.limit_decision(&plan.api, &r.name, r.limited);
            }
        }
    }
    admitted
}

/// A decision for a global limit that was not consulted (a local limit refused first): as
/// though untouched, not refusing.
fn not_consulted(quota: u64) -> Decision {
    Decision {
        allowed: false,
        limit: quota,
        remaining: quota,
        reset_after_ms: 0,
        retry_after_ms: 0,
    }
}

async fn admit_mixed(
    local: &LocalStore,
    global: Option<&Arc<GlobalStore>>,
    plan: &LimitPlan,
) -> Admitted {
    let mut charged = Charged::default();
    let (globals, locals): (Vec<usize>, Vec<usize>) =
        (0..plan.limits.len()).partition(|&i| plan.limits[i].scope == LimitScope::Global);
    let req = |i: &usize| plan.limits[*i].request.clone();
    let local_reqs: Vec<LimitRequest> = locals.iter().map(req).collect();
    let global_reqs: Vec<LimitRequest> = globals.iter().map(req).collect();
    let mut decisions: Vec<Decision> = plan.limits.iter().map(|l| not_consulted(l.quota)).collect();
    let finish = |decisions: Vec<Decision>, charged: Charged| {
        let o = plan.outcome(&decisions);
        Admitted {
            verdict: plan.verdict(&o),
            outcome: Some(o),
            charged,
        }
    };

    // 1. Peek the local limits. A shared limit that would refuse marks the refused group as
    // active (see tollgate_state's shares docs), exactly as a refusing charge would.
    if !local_reqs.is_empty() {
        let peek = local.peek_all_noting_refusals(&local_reqs);
        if peek.iter().any(|d| !d.allowed) {
            for (i, d) in locals.iter().zip(peek) {
                decisions[*i] = d;
            }
            return finish(decisions, charged);
        }
    }

    // 2. Charge the global limits (or fall back).
    let answer = match global {
        Some(g) => g.check_all(&global_reqs).await,
        None => Err(tollgate_state::StoreError::Unavailable(
            "no shared store is running".into(),
        )),
    };
    match answer {
        Ok(got) => {
            let refused = got.iter().any(|d| !d.allowed);
            for (i, d) in globals.iter().zip(got) {
                decisions[*i] = d;
            }
            if refused {
                if !local_reqs.is_empty() {
                    // Reported as they stand (a cost-0 peek), not as if this request went ahead.
                    let as_is: Vec<LimitRequest> = local_reqs
                        .iter()
                        .map(|r| LimitRequest {
                            cost: 0,
                            ..r.clone()
                        })
                        .collect();
                    for (i, d) in locals.iter().zip(local.peek_all(&as_is)) {
                        decisions[*i] = Decision {
                            allowed: false,
                            ..d
                        };
                    }
                }
                return finish(decisions, charged);
            }
            // 3. Charge the local limits.
            if !local_reqs.is_empty() {
                let got = local.check_all(&local_reqs);
                let refused = got.iter().any(|d| !d.allowed);
                for (i, d) in locals.iter().zip(got) {
                    decisions[*i] = d;
                }
                if refused {
                    for i in &globals {
                        decisions[*i].allowed = false;
                    }
                    // Lost the race for the last local unit: give the global charge back.
                    if let Some(g) = global
                        && let Err(e) = g.redis().refund(&global_reqs).await
                    {
                        tracing::warn!(error = %e, "global rate-limit units of a refused request not given back: the shared limit store failed");
                    }
                    return finish(decisions, charged);
                }
                charged.local = local_reqs;
            }
            charged.global = global_reqs;
            finish(decisions, charged)
        }
        Err(_) => {
            if let Some(l) = globals
                .iter()
                .map(|i| &plan.limits[*i])
                .find(|l| l.on_store_failure == OnStoreFailure::Closed)
            {
                let err = GatewayError::new(
                    ErrorCode::LimitStoreUnavailable,
                    format!(
                        "the shared limit store is unavailable and limit {:?} of API {:?} fails closed",
                        l.name, plan.api
                    ),
                );
                return Admitted {
                    outcome: None,
                    verdict: if plan.report_mode {
                        LimitVerdict::Reported(err)
                    } else {
                        LimitVerdict::Refused(err)
                    },
                    charged,
                };
            }
            // Fail open: every limit in one local decision, globals at the fair share.
            let share = global.map_or(1, |g| g.instances());
            let reqs: Vec<LimitRequest> = plan
                .limits
                .iter()
                .map(|l| match l.scope {
                    LimitScope::Local => l.request.clone(),
                    LimitScope::Global => crate::limit_store::fair_share(&l.request, share),
                })
                .collect();
            let got = local.check_all(&reqs);
            if got.iter().all(|d| d.allowed) {
                charged.local = reqs;
            }
            finish(got, charged)
        }
    }
}
