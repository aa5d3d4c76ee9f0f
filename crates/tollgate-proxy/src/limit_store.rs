//! The shared (Redis) store for `scope: global` limits, with degraded-mode tracking.
//!
//! Every call is bounded by `state.redis.timeout`. The first failure (timeout, connection
//! refused, unexpected reply) switches the store to **degraded**: one `warn` log line, the
//! `tollgate_limit_store_degraded` gauge goes to 1, and from then on requests do not wait for
//! Redis at all — [`GlobalStore::check_all`] fails at once and admission applies each limit's
//! `on_store_failure`. A background task beats every [`BEAT`] (every [`PROBE`] while degraded):
//! it announces this instance in Redis (see `tollgate_state::RedisStore::heartbeat`), learns how
//! many instances are alive, and the first successful beat ends degraded mode (one `info` log
//! line, gauge back to 0). Recovery needs no restart.
//!
//! Fair share: while degraded, a global limit is enforced locally at `limit / instances` (at
//! least 1), where `instances` is the last count seen from Redis (1 if Redis was never reached).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tollgate_config::RedisState;
use tollgate_policy::{Decision, LimitRequest};
use tollgate_state::{LimitSpec, RedisConfig, RedisStore, StoreError};
use tollgate_telemetry::Metrics;

/// Heartbeat interval while Redis answers.
pub const BEAT: Duration = Duration::from_secs(3);
/// Probe interval while degraded (bounds how long recovery takes to notice).
pub const PROBE: Duration = Duration::from_millis(500);
/// An instance that has not beaten for this long is no longer counted.
pub const INSTANCE_TTL: Duration = Duration::from_secs(10);

/// The shared counter store and its health.
pub struct GlobalStore {
    redis: RedisStore,
    /// The config it was built from, so a reload with the same settings keeps it.
    config: RedisState,
    degraded: AtomicBool,
    instances: AtomicU64,
    member: String,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for GlobalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalStore")
            .field("redis", &self.redis)
            .field("degraded", &self.degraded)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

/// Checks that a Redis URL is one this build can use (without connecting).
pub fn check_url(url: &str) -> Result<(), String> {
    let lower = url.trim().to_ascii_lowercase();
    if lower.starts_with("redis://")
        || lower.starts_with("redis+unix://")
        || lower.starts_with("unix://")
    {
        Ok(())
    } else if lower.starts_with("rediss://") {
        Err("rediss:// (TLS) is not supported yet; use redis:// on a trusted network".into())
    } else {
        Err("expected a redis:// URL (Sentinel and Cluster are not supported yet)".into())
    }
}

impl GlobalStore {
    /// Creates the store (no connection yet: the gateway starts while Redis is down) and spawns
    /// its heartbeat task. Must run inside a tokio runtime.
    pub fn start(config: &RedisState, metrics: Arc<Metrics>) -> Result<Arc<GlobalStore>, String> {
        let url = config.url.resolve().map_err(|e| e.to_string())?;
        check_url(url.expose())?;
        let mut rc = RedisConfig::new(url.expose());
        rc.timeout = config.timeout.get();
        rc.prefix = config.prefix.clone();
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("the shared limit store needs a running async runtime".into());
        }
        // `RedisStore::new` connects lazily and never awaits anything, so it completes on its
        // first poll; this keeps gateway construction synchronous.
        let redis = RedisStore::new(rc)
            .now_or_never()
            .ok_or_else(|| "the shared limit store did not initialise".to_owned())?
            .map_err(|e| e.to_string())?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let store = Arc::new(GlobalStore {
            redis,
            config: config.clone(),
            degraded: AtomicBool::new(false),
            instances: AtomicU64::new(1),
            member: format!("{}-{}", std::process::id(), nanos),
            metrics,
        });
        store.metrics.limit_store_degraded(false);
        tokio::spawn(heartbeat(Arc::downgrade(&store)));
        Ok(store)
    }

    /// Built from these settings (a reload with equal settings keeps this store).
    pub fn same_config(&self, c: &RedisState) -> bool {
        &self.config == c
    }

    pub fn redis(&self) -> &RedisStore {
        &self.redis
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Live instances last seen in Redis (1 if never known).
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed).max(1)
    }

    /// Charges the limits in Redis; while degraded, fails at once without waiting.
    pub async fn check_all(&self, reqs: &[LimitRequest]) -> Result<Vec<Decision>, StoreError> {
        self.call(reqs, true).await
    }

    /// Peeks the limits in Redis (nothing charged); while degraded, fails at once.
    pub async fn peek_all(&self, reqs: &[LimitRequest]) -> Result<Vec<Decision>, StoreError> {
        self.call(reqs, false).await
    }

    async fn call(&self, reqs: &[LimitRequest], charge: bool) -> Result<Vec<Decision>, StoreError> {
        if self.is_degraded() {
            return Err(StoreError::Unavailable(
                "degraded: waiting for recovery".into(),
            ));
        }
        let t = Instant::now();
        let r = self
            .retry_once(|| async {
                if charge {
                    self.redis.check_all(reqs).await
                } else {
                    self.redis.peek_all(reqs).await
                }
            })
            .await;
        match &r {
            Ok(_) => self.metrics.limit_store_latency(t.elapsed()),
            Err(e) => self.failed(e),
        }
        r
    }

    /// Runs `op`, and once more if it failed as unavailable while time is left in the budget.
    ///
    /// A connection that broke while idle (Redis restarted, a proxy dropped it) is only noticed
    /// when used; the manager then reconnects. One immediate retry within the same time budget
    /// keeps that from looking like an outage. Should the broken call have reached Redis after
    /// all, the retry charges twice: over-counting, never over-admitting.
    async fn retry_once<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let t = Instant::now();
        let first = op().await;
        let budget = self.config.timeout.get();
        match first {
            Err(StoreError::Unavailable(_)) => match budget.checked_sub(t.elapsed()) {
                Some(left) => tokio::time::timeout(left, op()).await.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(format!(
                        "no answer within {budget:?}"
                    )))
                }),
                None => first,
            },
            other => other,
        }
    }

    fn failed(&self, e: &StoreError) {
        let kind = match e {
            StoreError::Unavailable(_) => "unavailable",
            _ => "protocol",
        };
        self.metrics.limit_store_error(kind);
        if matches!(e, StoreError::Invalid(_)) {
            // A malformed request, not a store problem.
            return;
        }
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.metrics.limit_store_degraded(true);
            tracing::warn!(
                error = %e,
                limit_store.instances = self.instances(),
                "shared limit store unreachable: global limits follow on_store_failure until it recovers"
            );
        }
    }

    fn recovered(&self, instances: u64) {
        self.instances.store(instances.max(1), Ordering::Relaxed);
        if self.degraded.swap(false, Ordering::Relaxed) {
            self.metrics.limit_store_degraded(false);
            tracing::info!(
                limit_store.instances = instances,
                "shared limit store reachable again: global limits are shared again"
            );
        }
    }

    /// Leaves the instance set (shutdown), best effort.
    pub async fn leave(&self) {
        let _ = self.redis.leave(&self.member).await;
    }
}

async fn heartbeat(store: std::sync::Weak<GlobalStore>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        let beat = s
            .retry_once(|| s.redis.heartbeat(&s.member, INSTANCE_TTL))
            .await;
        let wait = match beat {
            Ok(n) => {
                s.recovered(n);
                BEAT
            }
            Err(e) => {
                s.failed(&e);
                PROBE
            }
        };
        drop(s);
        tokio::time::sleep(wait).await;
    }
}

/// The request as decided locally at `1 / instances` of its limit (at least 1 unit), with its
/// cost capped at that share and each consumer share's guarantee divided likewise.
pub fn fair_share(req: &LimitRequest, instances: u64) -> LimitRequest {
    let n = instances.max(1);
    let part = |x: u64| (x / n).max(1);
    let (spec, cap) = match req.spec {
        LimitSpec::FixedWindow { limit, window } => (
            LimitSpec::FixedWindow {
                limit: part(limit),
                window,
            },
            part(limit),
        ),
        LimitSpec::Sliding { limit, window_ms } => (
            LimitSpec::Sliding {
                limit: part(limit),
                window_ms,
            },
            part(limit),
        ),
        LimitSpec::Gcra {
            rate_per_sec,
            burst,
        } => {
            // Instance counts are small; precision loss is irrelevant.
            #[allow(clippy::cast_precision_loss)]
            let rate = rate_per_sec / n as f64;
            (
                LimitSpec::Gcra {
                    rate_per_sec: rate,
                    burst: part(burst),
                },
                part(burst),
            )
        }
    };
    let mut out = LimitRequest::new(req.key.clone(), spec, req.cost.min(cap));
    // Consumer shares keep their proportions: each guarantee is divided the same way.
    out.shares = req.shares.as_ref().map(|s| s.scaled(n));
    out
}

#[cfg(test)]
mod tests {
    use tollgate_state::Window;

    use super::*;

    #[test]
    fn fair_share_divides_limits_and_caps_cost() {
        let r = LimitRequest::new(
            "a:l:-",
            LimitSpec::FixedWindow {
                limit: 100,
                window: Window::Hour,
            },
            70,
        );
        let s = fair_share(&r, 3);
        assert_eq!(
            s.spec,
            LimitSpec::FixedWindow {
                limit: 33,
                window: Window::Hour
            }
        );
        assert_eq!((s.key.as_str(), s.cost), ("a:l:-", 33));
        // Never below one unit, and 0 instances means 1.
        let one = LimitRequest::new(
            "k",
            LimitSpec::Sliding {
                limit: 2,
                window_ms: 10,
            },
            1,
        );
        assert_eq!(
            fair_share(&one, 5).spec,
            LimitSpec::Sliding {
                limit: 1,
                window_ms: 10
            }
        );
        assert_eq!(fair_share(&one, 0).spec, one.spec);
        let g = LimitRequest::new(
            "k",
            LimitSpec::Gcra {
                rate_per_sec: 10.0,
                burst: 20,
            },
            1,
        );
        assert_eq!(
            fair_share(&g, 2).spec,
            LimitSpec::Gcra {
                rate_per_sec: 5.0,
                burst: 10
            }
        );
    }

    #[test]
    fn only_plain_redis_urls_are_accepted() {
        assert!(check_url("redis://:pw@127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://h:6380").unwrap_err().contains("TLS"));
        assert!(check_url("redis-sentinel://h").is_err());
    }
}
