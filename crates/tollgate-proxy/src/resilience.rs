//! Per-API failure-handling state — circuit breaker, provider back-off, retry
//! budget — and the pre-check that runs before admission (rate limits).
//!
//! The state lives on the long-lived [`crate::Gateway`], keyed by API name, so
//! a configuration reload keeps it for an API whose `retry` / `breaker` /
//! `provider_backoff` settings did not change (a changed breaker starts closed;
//! a running provider back-off is carried over). Lookups are lock-free (an
//! `ArcSwap` snapshot); a short mutex serialises the rare rebuilds.
//!
//! The pre-check refuses a request when the API's breaker is open (503
//! `circuit_open`) or a provider back-off runs (429 `provider_backoff`), each
//! with `Retry-After`. It runs before admission, so a refused request consumes
//! no rate-limit quota. In report mode it only logs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderMap;
use tollgate_config::{Api, Mode, ProviderBackoff as BackoffConfig, Retry as RetryConfig};
use tollgate_policy::{ErrorCode, GatewayError, Policy};
use tollgate_telemetry::Metrics;

use crate::backoff::{self, ProviderBackoff};
use crate::breaker::{Breaker, Permit};
use crate::retry::Budget;

/// One API's failure-handling settings and state.
pub struct ApiResilience {
    pub name: Arc<str>,
    pub retry: Option<RetryConfig>,
    pub breaker: Option<Arc<Breaker>>,
    pub backoff: Arc<ProviderBackoff>,
    backoff_cfg: BackoffConfig,
    budget: Option<Arc<Budget>>,
    /// Refusals are logged, not enforced (`mode: report` or `report_only`).
    pub report: bool,
    metrics: Arc<Metrics>,
    /// The newest configuration version this state was checked against.
    version: AtomicU64,
}

/// Why the pre-check refused a request, and when to come back.
#[derive(Debug)]
pub struct Refusal {
    pub error: GatewayError,
    pub retry_after: Duration,
}

impl ApiResilience {
    fn build(
        api: &Api,
        report: bool,
        version: u64,
        metrics: &Arc<Metrics>,
        prev: Option<&ApiResilience>,
    ) -> Self {
        let name: Arc<str> = api.name.as_str().into();
        let breaker = api.breaker.as_ref().map(|cfg| {
            prev.and_then(|p| p.breaker.as_ref())
                .filter(|b| b.config() == cfg)
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(Breaker::new(cfg.clone(), name.clone(), metrics.clone()))
                })
        });
        let budget = api.retry.as_ref().map(|cfg| {
            prev.filter(|p| p.retry.as_ref() == Some(cfg))
                .and_then(|p| p.budget.clone())
                .unwrap_or_else(|| Arc::new(Budget::new(cfg)))
        });
        let backoff = prev.map_or_else(|| Arc::new(ProviderBackoff::new()), |p| p.backoff.clone());
        Self {
            name,
            retry: api.retry.clone(),
            breaker,
            backoff,
            backoff_cfg: api.provider_backoff.clone(),
            budget,
            report,
            metrics: metrics.clone(),
            version: AtomicU64::new(version),
        }
    }

    fn same_settings(&self, api: &Api, report: bool) -> bool {
        self.retry == api.retry
            && self.breaker.as_ref().map(|b| b.config()) == api.breaker.as_ref()
            && self.backoff_cfg == api.provider_backoff
            && self.report == report
    }

    /// Breaker and provider back-off, before admission. `Ok` carries the
    /// breaker's leave for the first attempt (none when the API has no breaker).
    pub fn admit(&self) -> Result<Option<Permit>, Refusal> {
        let permit = match &self.breaker {
            Some(b) => match b.acquire() {
                Ok(p) => Some(p),
                Err(wait) => {
                    return Err(Refusal {
                        error: GatewayError::new(
                            ErrorCode::CircuitOpen,
                            format!(
                                "API {:?} is failing; its circuit breaker is open for {} s more",
                                &*self.name,
                                backoff::retry_after_secs(wait)
                            ),
                        ),
                        retry_after: wait,
                    });
                }
            },
            None => None,
        };
        if self.backoff_cfg.enabled
            && let Some(left) = self.backoff.remaining()
        {
            return Err(Refusal {
                error: GatewayError::new(
                    ErrorCode::ProviderBackoff,
                    format!(
                        "the provider of API {:?} reported its rate limit exhausted; retry in {} s",
                        &*self.name,
                        backoff::retry_after_secs(left)
                    ),
                ),
                retry_after: left,
            });
        }
        Ok(permit)
    }

    /// Learns a provider back-off from an upstream response.
    // Hook for per-credential back-off: when credentials carry several keys,
    // the key that got this response can be parked instead of the whole API.
    pub fn learn(&self, status: u16, headers: &HeaderMap) {
        if !self.backoff_cfg.enabled {
            return;
        }
        if let Some(wait) = backoff::learn(status, headers, SystemTime::now())
            && self.backoff.extend(wait, self.backoff_cfg.cap.get())
        {
            self.metrics.provider_backoff(&self.name);
            tracing::info!(
                api = %self.name, backoff.ms = wait.min(self.backoff_cfg.cap.get()).as_millis() as u64,
                upstream.status = status, "provider signalled its rate limit is exhausted; backing off"
            );
        }
    }

    pub fn budget_request(&self) {
        if let Some(b) = &self.budget {
            b.request();
        }
    }

    pub fn budget_try_retry(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.try_retry())
    }
}

type Map = HashMap<Arc<str>, Arc<ApiResilience>>;

/// Every API's state, by name.
pub struct Registry {
    map: ArcSwap<Map>,
    writer: Mutex<()>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            map: ArcSwap::from_pointee(Map::new()),
            writer: Mutex::new(()),
            metrics,
        }
    }

    /// The state of API `name` under `policy` (created or refreshed on first use after a reload).
    pub fn get(&self, name: &str, policy: &Policy) -> Option<Arc<ApiResilience>> {
        let version = policy.version();
        if let Some(s) = self.map.load().get(name)
            && s.version.load(Ordering::Acquire) >= version
        {
            return Some(s.clone());
        }
        let cfg = policy.config();
        let api = cfg.apis.iter().find(|a| a.name == name)?;
        let report = cfg.report_only || api.mode == Mode::Report;
        let _w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.map.load_full();
        let prev = current.get(name);
        if let Some(p) = prev
            && p.same_settings(api, report)
        {
            p.version.fetch_max(version, Ordering::AcqRel);
            return Some(p.clone());
        }
        let state = Arc::new(ApiResilience::build(
            api,
            report,
            version,
            &self.metrics,
            prev.map(|p| &**p),
        ));
        let mut next = (*current).clone();
        next.insert(state.name.clone(), state.clone());
        self.map.store(Arc::new(next));
        Some(state)
    }

    /// What `/admin/limits` shows per API: breaker state and time until it lets a
    /// probe through, and time left of a provider back-off (`null` when none).
    /// APIs that have not served a request yet are not listed.
    pub fn status(&self, api: &str) -> Option<serde_json::Value> {
        let map = self.map.load();
        let s = map.get(api)?;
        let breaker = s.breaker.as_ref().map(|b| {
            let state = b.state();
            serde_json::json!({
                "state": crate::breaker::state_name(state),
                "open_for_ms": b.open_remaining().map(|d| d.as_millis() as u64),
            })
        });
        Some(serde_json::json!({
            "breaker": breaker,
            "provider_backoff_ms": s.backoff.remaining().map(|d| d.as_millis() as u64),
        }))
    }
}
