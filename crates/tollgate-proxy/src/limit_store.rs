//! The shared (Redis) store for `scope: global` limits, with degraded-mode tracking.
//!
//! Every call is bounded by `state.redis.timeout`. The first failure (timeout, connection
//! refused, unexpected reply) switches the store to **degraded**: one `warn` log line, the
//! `tollgate_limit_store_degraded` gauge goes to 1, and from then on requests do not wait for
//! Redis at all — [`GlobalStore::check_all`] fails at once and admission applies each limit's
//! `on_store_failure`. A background task beats every [`BEAT`] (every [`PROBE`] while degraded):
//! it announces this instance in Redis (see `tollgate_state::RedisStore::heartbeat`), learns how
//! many instances are alive, and the first successful beat ends degraded mode (one `info` log
//! line, gauge back to 0). Recovery needs no restart. With Sentinel, every beat also asks the
//! sentinels for the current master (in the background), so a failover is followed within a
//! beat, or a probe or two, of the promotion.
//!
//! Fair share: while degraded, a global limit is enforced locally at `limit / instances` (at
//! least 1), where `instances` is the last count seen from Redis (1 if Redis was never reached).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tollgate_config::RedisState;
use tollgate_policy::{Decision, LimitRequest};
use tollgate_state::redis::{TlsPem, Topology};
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

/// A `state.redis` setting that cannot be used: the key it belongs to and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettingError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for RedisSettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn setting(key: &'static str, message: impl Into<String>) -> RedisSettingError {
    RedisSettingError {
        key,
        message: message.into(),
    }
}

/// Checks that a Redis URL is one this build can use (without connecting).
pub fn check_url(url: &str) -> Result<(), String> {
    let lower = url.trim().to_ascii_lowercase();
    if ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        Ok(())
    } else {
        Err(
            "expected a redis:// or rediss:// (TLS) URL; for Sentinel or Cluster use \
             state.redis.sentinel or state.redis.cluster"
                .into(),
        )
    }
}

/// Reads a PEM file and checks it holds what `what` needs (certificates or a private key), so
/// a wrong path or file is a config error rather than a failure at the first connection.
fn read_pem(
    key: &'static str,
    path: &str,
    private_key: bool,
) -> Result<Vec<u8>, RedisSettingError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bytes =
        std::fs::read(path).map_err(|e| setting(key, format!("cannot read {path}: {e}")))?;
    if private_key {
        PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|_| setting(key, format!("{path} holds no PEM private key")))?;
    } else {
        let n = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| setting(key, format!("{path} is not valid PEM")))?
            .len();
        if n == 0 {
            return Err(setting(key, format!("{path} holds no PEM certificate")));
        }
    }
    Ok(bytes)
}

/// The store's connection settings from `state.redis`: secrets resolved, TLS files read and
/// checked. Connects to nothing, so `validate` and reloads use it too.
pub fn redis_config(config: &RedisState) -> Result<RedisConfig, RedisSettingError> {
    let resolve = |key: &'static str, r: &Option<tollgate_config::SecretRef>| {
        r.as_ref()
            .map(|s| s.resolve().map(|v| v.expose().to_owned()))
            .transpose()
            .map_err(|e| setting(key, e.to_string()))
    };
    let topology = match (&config.url, &config.sentinel, &config.cluster) {
        (Some(url), None, None) => {
            let url = url
                .resolve()
                .map_err(|e| setting("state.redis.url", e.to_string()))?;
            check_url(url.expose()).map_err(|m| setting("state.redis.url", m))?;
            if config.tls.is_some()
                && !url
                    .expose()
                    .trim()
                    .to_ascii_lowercase()
                    .starts_with("rediss://")
            {
                return Err(setting(
                    "state.redis.tls",
                    "TLS settings need a rediss:// url",
                ));
            }
            Topology::Single {
                url: url.expose().to_owned(),
            }
        }
        (None, Some(s), None) => Topology::Sentinel {
            master: s.master.clone(),
            nodes: s.nodes.clone(),
            username: resolve("state.redis.sentinel.username", &s.username)?,
            password: resolve("state.redis.sentinel.password", &s.password)?,
        },
        (None, None, Some(c)) => Topology::Cluster {
            nodes: c.nodes.clone(),
        },
        _ => {
            return Err(setting(
                "state.redis",
                "set exactly one of url, sentinel or cluster",
            ));
        }
    };
    let tls = match &config.tls {
        None => None,
        Some(t) => Some(TlsPem {
            ca: t
                .ca_file
                .as_deref()
                .map(|p| read_pem("state.redis.tls.ca_file", p, false))
                .transpose()?,
            client_cert: t
                .cert_file
                .as_deref()
                .map(|p| read_pem("state.redis.tls.cert_file", p, false))
                .transpose()?,
            client_key: t
                .key_file
                .as_deref()
                .map(|p| read_pem("state.redis.tls.key_file", p, true))
                .transpose()?,
        }),
    };
    let mut rc = RedisConfig::with_topology(topology);
    rc.tls = tls;
    rc.username = resolve("state.redis.username", &config.username)?;
    rc.password = resolve("state.redis.password", &config.password)?;
    rc.timeout = config.timeout.get();
    rc.prefix = config.prefix.clone();
    Ok(rc)
}

/// Checks `state.redis` fully without connecting (addresses parsed, TLS material usable).
pub fn check_config(config: &RedisState) -> Result<(), RedisSettingError> {
    let rc = redis_config(config)?;
    // Building the connection parses addresses and TLS material; it connects to nothing.
    // Needs no runtime for that, but the sentinel and cluster variants are built the same way.
    let key = match rc.topology {
        Topology::Single { .. } => "state.redis.url",
        Topology::Sentinel { .. } => "state.redis.sentinel",
        Topology::Cluster { .. } => "state.redis.cluster",
    };
    tollgate_state::RedisStore::check(rc).map_err(|e| setting(key, e.to_string()))
}

impl GlobalStore {
    /// Creates the store (no connection yet: the gateway starts while Redis is down) and spawns
    /// its heartbeat task. Must run inside a tokio runtime.
    pub fn start(config: &RedisState, metrics: Arc<Metrics>) -> Result<Arc<GlobalStore>, String> {
        let rc = redis_config(config).map_err(|e| e.to_string())?;
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
    // Why the store was last unreachable, so each new cause is logged once.
    let mut cause: Option<String> = None;
    loop {
        let Some(s) = store.upgrade() else { return };
        let beat = s
            .retry_once(|| s.redis.heartbeat(&s.member, INSTANCE_TTL))
            .await;
        let wait = match beat {
            Ok(n) => {
                s.recovered(n);
                cause = None;
                // Sentinel: a failover can promote a replica while the old master still
                // answers (until the sentinels demote it); asking on every beat keeps the
                // time this gateway writes to a superseded master short.
                s.redis.refresh_topology();
                BEAT
            }
            Err(e) => {
                s.failed(&e);
                // Sentinel: the master may have moved; ask the sentinels again.
                s.redis.refresh_topology();
                // Callers only see timeouts while the connection retries in the background;
                // a fresh attempt says why (refused, untrusted certificate, wrong password…).
                if let Err(why) = s.redis.diagnose().await
                    && cause.as_deref() != Some(why.as_str())
                {
                    tracing::warn!(
                        error = %why,
                        "shared limit store: cannot connect"
                    );
                    cause = Some(why);
                }
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
    fn redis_and_rediss_urls_are_accepted() {
        assert!(check_url("redis://:pw@127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://h:6380").is_ok());
        assert!(
            check_url("redis-sentinel://h")
                .unwrap_err()
                .contains("sentinel")
        );
    }
}
