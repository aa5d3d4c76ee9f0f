//! Shared counters in Redis: one Lua script call per decision evaluates every limit of the
//! request atomically with Redis' own clock (`TIME`), so all gateways agree on window edges and
//! a request denied by one limit charges none of the others.
//!
//! Keys are `{<prefix>:<group>}:<rest>` where `<group>` is the part of the limit key before the
//! first `:` (normally the API name): the braces make every key of one decision hash to the same
//! Redis Cluster slot, which a multi-key script requires. Each key is a small hash with a TTL
//! (`PEXPIRE`) of how long its state matters, so idle keys disappear on their own.
//!
//! Every call is bounded by a short timeout (default 50 ms); a timeout or connection failure is
//! [`StoreError::Unavailable`] so the caller can fail open or closed per limit.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::algo::emission_interval_us;
use crate::{Borrow, Decision, LimitRequest, LimitSpec, StoreError, Window};

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("check_all.lua")));

/// Connection settings for [`RedisStore`].
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL; may carry credentials, so it is never printed.
    pub url: String,
    /// Upper bound for one decision (connect included). Default 50 ms.
    pub timeout: Duration,
    /// First part of the hash tag; lets tests and tenants share one Redis. Default `tollgate`.
    pub prefix: String,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: Duration::from_millis(50),
            prefix: "tollgate".to_owned(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Redis-backed counter store. Cheap to clone (the connection manager multiplexes one
/// connection and reconnects on its own after failures).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    timeout: Duration,
    prefix: Arc<str>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn map_err(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Protocol(e.to_string())
    }
}

impl RedisStore {
    /// Creates the store without connecting: the first decision connects (within its
    /// timeout), so a gateway starts even while Redis is down. Must run inside a tokio runtime.
    pub async fn new(cfg: RedisConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|_| StoreError::Invalid("redis url is not valid".into()))?;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            // Reconnection runs in the background; keep its back-off short so recovery after
            // an outage is quick, and each caller is bounded by `timeout` anyway.
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, mgr_cfg).map_err(map_err)?;
        Ok(Self {
            conn,
            timeout: cfg.timeout,
            prefix: cfg.prefix.into(),
        })
    }

    /// Decides and charges all limits atomically (see the crate docs).
    pub async fn check_all(&self, reqs: &[LimitRequest]) -> Result<Vec<Decision>, StoreError> {
        self.run(reqs, true).await
    }

    /// Decides without charging.
    pub async fn peek_all(&self, reqs: &[LimitRequest]) -> Result<Vec<Decision>, StoreError> {
        self.run(reqs, false).await
    }

    /// The Redis key holding `key`'s counter.
    pub fn redis_key(&self, key: &str) -> String {
        let (group, rest) = key.split_once(':').unwrap_or((key, ""));
        format!("{{{}:{group}}}:{rest}", self.prefix)
    }

    async fn run(&self, reqs: &[LimitRequest], charge: bool) -> Result<Vec<Decision>, StoreError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let group = |k: &str| k.split_once(':').map_or(k, |(g, _)| g).to_owned();
        let first = group(&reqs[0].key);
        let mut inv = SCRIPT.prepare_invoke();
        inv.arg(if charge { "1" } else { "0" });
        let mut seen: Vec<String> = Vec::new();
        for r in reqs {
            if group(&r.key) != first {
                return Err(StoreError::Invalid(
                    "all keys of one decision must share the group before ':'".into(),
                ));
            }
            for k in r.counter_keys() {
                // The script stages no per-key state, so one key twice would double-read it.
                if seen.contains(&k) {
                    return Err(StoreError::Invalid("duplicate key in one decision".into()));
                }
                inv.key(self.redis_key(&k));
                seen.push(k);
            }
            match r.spec {
                LimitSpec::FixedWindow { limit, window } => {
                    let (kind, a, b): (&str, i64, i64) = match window {
                        Window::Second => ("f", 1_000, 0),
                        Window::Minute => ("f", 60_000, 0),
                        Window::Hour => ("f", 3_600_000, 0),
                        Window::Day => ("f", 86_400_000, 0),
                        Window::Month {
                            utc_offset_minutes,
                            renewal_day,
                        } => ("m", utc_offset_minutes.into(), renewal_day.into()),
                    };
                    inv.arg(kind).arg(limit).arg(a).arg(b);
                }
                LimitSpec::Sliding { limit, window_ms } => {
                    inv.arg("s").arg(limit).arg(window_ms.max(1)).arg(0);
                }
                LimitSpec::Gcra {
                    rate_per_sec,
                    burst,
                } => {
                    inv.arg("g")
                        .arg(burst)
                        .arg(emission_interval_us(rate_per_sec))
                        .arg(0);
                }
            }
            inv.arg(r.cost);
            match &r.shares {
                Some(sh) if !sh.spec.groups.is_empty() => {
                    let me = sh.group.min(sh.spec.groups.len() - 1) + 1;
                    inv.arg(sh.spec.groups.len())
                        .arg(me)
                        .arg(match sh.spec.borrow {
                            Borrow::Off => "0",
                            Borrow::Unallocated => "u",
                            Borrow::Idle => "1",
                        });
                    for g in &sh.spec.groups {
                        inv.arg(g.guarantee);
                    }
                }
                _ => {
                    inv.arg(0).arg(1).arg("0");
                }
            }
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| StoreError::Unavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(map_err)?;
        if reply.len() != reqs.len() * 5 {
            return Err(StoreError::Protocol(format!(
                "script returned {} values for {} limits",
                reply.len(),
                reqs.len()
            )));
        }
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(reply
            .chunks_exact(5)
            .map(|c| Decision {
                allowed: c[0] == 1,
                limit: u(c[1]),
                remaining: u(c[2]),
                reset_after_ms: u(c[3]),
                retry_after_ms: u(c[4]),
            })
            .collect())
    }
}

#[path = "redis_fleet.rs"]
mod fleet;

#[path = "redis_backoff.rs"]
mod backoff;
