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
//!
//! **Shared back-off.** With `state.redis` configured, a learned back-off is also written to
//! Redis (`<prefix>:{<api>}:backoff`, `PX` expiry; spawned, never awaited by a request) and a
//! background task per API re-reads it every [`SHARED_REFRESH`] while the API has traffic, so
//! every replica stops sending within about that long. Requests never wait for Redis.
//!
//! **Per credential key.** When the API has several `credentials.keys`, a back-off signal
//! parks only the key that got it (left out of rotation until the reset, see
//! `Policy::skip_key`); the API-wide back-off starts only once every key is parked, and lasts
//! until the first of them is free again. Key back-offs are shared the same way, through the
//! same code path: `<prefix>:{<api>}:backoff:<key name>`, written when learnt and re-read by the
//! same refresher (one script call for the API's and all its keys' back-offs); a key parked by
//! another replica is left out of this replica's rotation from its next request on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderMap;
use tollgate_config::{Api, Mode, ProviderBackoff as BackoffConfig, Retry as RetryConfig};
use tollgate_policy::{ErrorCode, GatewayError, Policy};
use tollgate_telemetry::Metrics;

use crate::backoff::{self, ProviderBackoff};
use crate::breaker::{Breaker, Permit};
use crate::limit_store::GlobalStore;
use crate::retry::Budget;

/// How often a replica re-reads an API's shared back-off from Redis.
pub const SHARED_REFRESH: Duration = Duration::from_millis(250);
/// The shared back-off is only re-read while the API had a request within this long.
const IDLE_AFTER_MS: u64 = 60_000;

/// The API's back-off as shared through Redis (see the module docs).
struct Shared {
    /// The shared store as last seen by a request (the gateway's `state.redis`).
    store: ArcSwapOption<GlobalStore>,
    /// The refresher task runs.
    started: AtomicBool,
    /// When a request last asked (ms on the back-off's clock).
    used_ms: AtomicU64,
    backoff: Arc<ProviderBackoff>,
    /// Each credential key's back-off (APIs with several keys), shared like the API's.
    keys: Vec<(Arc<str>, Arc<ProviderBackoff>)>,
    /// The refresher extended a key's back-off; the next request parks it in the policy's key
    /// rotation (the refresher has no policy at hand).
    keys_changed: AtomicBool,
    api: Arc<str>,
    cap: Duration,
}

/// One credential key's back-off.
pub struct KeyBackoff {
    pub name: Arc<str>,
    pub backoff: Arc<ProviderBackoff>,
}

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
    shared: Arc<Shared>,
    /// Per-key back-offs, when the API has two or more `credentials.keys`.
    pub keys: Vec<KeyBackoff>,
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
        let names: Vec<&str> = api
            .credentials
            .as_ref()
            .map(|c| c.keys.iter().map(|k| k.name.as_str()).collect())
            .unwrap_or_default();
        let keys = if names.len() > 1 {
            names
                .iter()
                .map(|n| {
                    let backoff = ProviderBackoff::new();
                    if let Some(old) = prev.and_then(|p| p.keys.iter().find(|k| &*k.name == *n)) {
                        backoff.inherit(&old.backoff);
                    }
                    KeyBackoff {
                        name: Arc::from(*n),
                        backoff: Arc::new(backoff),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let shared = Arc::new(Shared {
            store: ArcSwapOption::empty(),
            started: AtomicBool::new(false),
            used_ms: AtomicU64::new(0),
            backoff: backoff.clone(),
            keys: keys
                .iter()
                .map(|k: &KeyBackoff| (k.name.clone(), k.backoff.clone()))
                .collect(),
            // A new state (first use or reload) parks the keys it inherited in the new policy.
            keys_changed: AtomicBool::new(true),
            api: name.clone(),
            cap: api.provider_backoff.cap.get(),
        });
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
            shared,
            keys,
        }
    }

    fn same_settings(&self, api: &Api, report: bool) -> bool {
        self.retry == api.retry
            && self.breaker.as_ref().map(|b| b.config()) == api.breaker.as_ref()
            && self.backoff_cfg == api.provider_backoff
            && self.report == report
            && self.same_keys(api)
    }

    fn same_keys(&self, api: &Api) -> bool {
        let names: Vec<&str> = api
            .credentials
            .as_ref()
            .map(|c| c.keys.iter().map(|k| k.name.as_str()).collect())
            .unwrap_or_default();
        if names.len() < 2 {
            return self.keys.is_empty();
        }
        names.len() == self.keys.len() && names.iter().zip(&self.keys).all(|(n, k)| *n == &*k.name)
    }

    /// Breaker and provider back-off, before admission. `Ok` carries the
    /// breaker's leave for the first attempt (none when the API has no breaker).
    /// `global` is the gateway's shared store (`state.redis`), for the shared back-off;
    /// `policy` the serving policy, whose key rotation gets the keys parked meanwhile.
    pub fn admit(
        &self,
        global: Option<&Arc<GlobalStore>>,
        policy: &Policy,
    ) -> Result<Option<Permit>, Refusal> {
        if self.backoff_cfg.enabled
            && let Some(g) = global
        {
            self.watch_shared(g);
        }
        if self.shared.keys_changed.load(Ordering::Relaxed)
            && self.shared.keys_changed.swap(false, Ordering::AcqRel)
        {
            let now = std::time::Instant::now();
            for k in &self.keys {
                if let Some(left) = k.backoff.remaining() {
                    policy.skip_key(&self.name, &k.name, now + left);
                }
            }
        }
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

    /// Learns a provider back-off for the whole API from an upstream response (every
    /// attempt of the retry loop). An API with several credential keys learns per key instead
    /// ([`ApiResilience::learn_key`]).
    pub fn learn(&self, status: u16, headers: &HeaderMap) {
        if !self.backoff_cfg.enabled || !self.keys.is_empty() {
            return;
        }
        if let Some(wait) = backoff::learn(status, headers, SystemTime::now()) {
            self.back_off(wait, status);
        }
    }

    /// Backs the whole API off for `wait` (capped), here and, when shared, in Redis.
    fn back_off(&self, wait: Duration, status: u16) {
        let wait = wait.min(self.backoff_cfg.cap.get());
        if !self.backoff.extend(wait, self.backoff_cfg.cap.get()) {
            return;
        }
        self.metrics.provider_backoff(&self.name);
        tracing::info!(
            api = %self.name, backoff.ms = wait.as_millis() as u64,
            upstream.status = status, "provider signalled its rate limit is exhausted; backing off"
        );
        self.share(None, wait);
    }

    /// Records a learnt back-off of the API (`key: None`) or of one credential key in Redis,
    /// when shared (spawned; a request never waits for it).
    fn share(&self, key: Option<&str>, wait: Duration) {
        let store = self.shared.store.load_full();
        if let Some(g) = store
            && !g.is_degraded()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let key = g.redis().backoff_key(&self.name, key);
            rt.spawn(async move {
                if let Err(e) = g.redis().extend_backoff(&key, wait).await {
                    tracing::warn!(error = %e, "provider back-off not shared: the shared store failed");
                }
            });
        }
    }

    /// Learns a back-off for credential key `key` from the final upstream response of a
    /// request that used it (APIs with several keys only): parks that key; once every key is
    /// parked, backs the whole API off until the first is free again.
    pub fn learn_key(&self, policy: &Policy, key: &str, status: u16, headers: &HeaderMap) {
        if !self.backoff_cfg.enabled || self.keys.is_empty() {
            return;
        }
        let Some(k) = self.keys.iter().find(|k| &*k.name == key) else {
            return;
        };
        let Some(wait) = backoff::learn(status, headers, SystemTime::now()) else {
            return;
        };
        let cap = self.backoff_cfg.cap.get();
        let wait = wait.min(cap);
        if wait.is_zero() {
            return;
        }
        k.backoff.extend(wait, cap);
        policy.skip_key(&self.name, key, std::time::Instant::now() + wait);
        self.share(Some(key), wait);
        self.metrics.provider_backoff(&self.name);
        tracing::info!(
            api = %self.name, credential = %key, backoff.ms = wait.as_millis() as u64,
            upstream.status = status, "provider signalled a key's rate limit is exhausted; parking the key"
        );
        let left: Option<Vec<Duration>> = self.keys.iter().map(|k| k.backoff.remaining()).collect();
        if let Some(soonest) = left.and_then(|l| l.into_iter().min()) {
            self.back_off(soonest, status);
        }
    }

    /// Keeps the shared store handle current and starts the refresher once.
    fn watch_shared(&self, g: &Arc<GlobalStore>) {
        let sh = &self.shared;
        sh.used_ms.store(sh.backoff.now_ms(), Ordering::Relaxed);
        let current = sh.store.load();
        if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, g)) {
            sh.store.store(Some(g.clone()));
        }
        if !sh.started.swap(true, Ordering::AcqRel)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(refresh_shared(Arc::downgrade(sh)));
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
            // A new policy has a fresh key rotation: park the keys still backing off in it.
            p.shared.keys_changed.store(true, Ordering::Release);
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
        let keys: serde_json::Map<String, serde_json::Value> = s
            .keys
            .iter()
            .map(|k| {
                (
                    k.name.to_string(),
                    serde_json::json!(k.backoff.remaining().map(|d| d.as_millis() as u64)),
                )
            })
            .collect();
        Some(serde_json::json!({
            "breaker": breaker,
            "provider_backoff_ms": s.backoff.remaining().map(|d| d.as_millis() as u64),
            "provider_backoff_shared": s.shared.store.load().is_some(),
            "key_backoff_ms": if s.keys.is_empty() { serde_json::Value::Null } else { keys.into() },
        }))
    }
}

/// Re-reads an API's shared back-offs (the API's and each credential key's, in one call) every
/// [`SHARED_REFRESH`] while the API is in use; ends when its state is replaced (reload) or
/// dropped.
async fn refresh_shared(weak: Weak<Shared>) {
    loop {
        tokio::time::sleep(SHARED_REFRESH).await;
        let Some(sh) = weak.upgrade() else { return };
        let idle = sh
            .backoff
            .now_ms()
            .saturating_sub(sh.used_ms.load(Ordering::Relaxed));
        if idle > IDLE_AFTER_MS {
            continue;
        }
        let Some(g) = sh.store.load_full() else {
            continue;
        };
        if g.is_degraded() {
            continue;
        }
        let redis = g.redis();
        let entries: Vec<(Option<&Arc<str>>, &ProviderBackoff)> =
            std::iter::once((None, &*sh.backoff))
                .chain(sh.keys.iter().map(|(n, b)| (Some(n), &**b)))
                .collect();
        let keys: Vec<String> = entries
            .iter()
            .map(|(k, _)| redis.backoff_key(&sh.api, k.map(|k| &**k)))
            .collect();
        let Ok(left) = redis.backoffs_left(&keys).await else {
            continue;
        };
        for ((key, backoff), left) in entries.into_iter().zip(left) {
            let Some(left) = left else { continue };
            if !backoff.extend(left, sh.cap) {
                continue;
            }
            match key {
                None => tracing::info!(
                    api = %sh.api, backoff.ms = left.as_millis() as u64,
                    "another gateway learnt a provider back-off; backing off"
                ),
                Some(k) => {
                    sh.keys_changed.store(true, Ordering::Release);
                    tracing::info!(
                        api = %sh.api, credential = %k, backoff.ms = left.as_millis() as u64,
                        "another gateway learnt a credential key's back-off; parking the key"
                    );
                }
            }
        }
    }
}
