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
//!
//! One server (plain or TLS), Sentinel and Cluster connect as described in `redis_conn.rs`;
//! the scripts and keys are the same for all three.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::algo::emission_interval_us;
use crate::{Borrow, Decision, LimitRequest, LimitSpec, StoreError};

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("check_all.lua")));

/// Connection settings for [`RedisStore`].
#[derive(Clone)]
pub struct RedisConfig {
    /// Where Redis is: one server (`redis://`/`rediss://` URL), Sentinel or Cluster. URLs and
    /// passwords may carry credentials, so they are never printed.
    pub topology: Topology,
    /// `Some`: TLS for every connection, with these (optional) CA and client certificate.
    /// A `rediss://` URL uses TLS with the system's roots when this is `None`.
    pub tls: Option<TlsPem>,
    /// ACL user and password of the data nodes; override what a URL carries.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Upper bound for one decision (connect included). Default 50 ms.
    pub timeout: Duration,
    /// First part of the hash tag; lets tests and tenants share one Redis. Default `tollgate`.
    pub prefix: String,
}

impl RedisConfig {
    /// A single server at `url` (`redis://` or `rediss://`).
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_topology(Topology::Single { url: url.into() })
    }

    pub fn with_topology(topology: Topology) -> Self {
        Self {
            topology,
            tls: None,
            username: None,
            password: None,
            timeout: Duration::from_millis(50),
            prefix: "tollgate".to_owned(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.topology {
            Topology::Single { .. } => "single",
            Topology::Sentinel { .. } => "sentinel",
            Topology::Cluster { .. } => "cluster",
        };
        f.debug_struct("RedisConfig")
            .field("topology", &kind)
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Redis-backed counter store. Cheap to clone (one multiplexed connection per server, which
/// reconnects on its own after failures; see `redis_conn.rs` for each topology).
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    probe: Arc<Probe>,
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
    use redis::ServerErrorKind as K;
    // A demoted master (`READONLY`), a cluster without quorum or mid-failover, and a server still
    // loading its data are outages of the store, not protocol faults.
    let unavailable_reply = matches!(
        e.kind(),
        redis::ErrorKind::Server(
            K::ReadOnly | K::ClusterDown | K::TryAgain | K::MasterDown | K::BusyLoading
        )
    );
    if unavailable_reply
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
    {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Protocol(e.to_string())
    }
}

impl RedisStore {
    /// Creates the store without connecting: the first decision connects (within its
    /// timeout), so a gateway starts even while Redis is down. Must run inside a tokio runtime.
    pub async fn new(cfg: RedisConfig) -> Result<Self, StoreError> {
        let (conn, probe) = Conn::new(ConnSpec::from(&cfg))?;
        Ok(Self {
            conn,
            probe: Arc::new(probe),
            timeout: cfg.timeout,
            prefix: cfg.prefix.into(),
        })
    }

    /// Checks the settings (addresses parse, TLS material is usable) without connecting.
    pub fn check(cfg: RedisConfig) -> Result<(), StoreError> {
        Conn::check(&ConnSpec::from(&cfg))
    }

    /// Why the store cannot be reached, from a fresh connection attempt (`Ok`: it can now).
    /// For logs after failures: the managed connection only shows callers a timeout while it
    /// retries in the background. Takes up to a few timeouts; not for the request path.
    pub async fn diagnose(&self) -> Result<(), String> {
        self.probe.check().await
    }

    /// After a failure: lets the connection look for the server again (Sentinel asks the
    /// sentinels for the current master, in the background). Cheap; no-op otherwise.
    pub fn refresh_topology(&self) {
        self.conn.refresh();
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
                    match crate::algo::aligned_len_ms(window) {
                        Some(len) => {
                            inv.arg("f").arg(limit).arg(len).arg(0);
                        }
                        None => {
                            // Calendar windows: the edges around this gateway's clock; the
                            // script picks the window by Redis' clock (algo::calendar_edges).
                            let edges = crate::algo::calendar_edges(window, crate::local::now_ms());
                            inv.arg("m").arg(limit).arg(edges_arg(&edges)).arg(0);
                        }
                    }
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

/// Calendar window edges as one script argument, `e1,e2,...` in epoch ms.
fn edges_arg(edges: &[u64]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(edges.len() * 14);
    for (i, e) in edges.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        let _ = write!(out, "{sep}{e}");
    }
    out
}

#[path = "redis_conn.rs"]
mod conn;
use conn::{Conn, ConnSpec, Probe};
pub use conn::{TlsPem, Topology};

impl From<&RedisConfig> for ConnSpec {
    fn from(cfg: &RedisConfig) -> Self {
        ConnSpec {
            topology: cfg.topology.clone(),
            tls: cfg.tls.clone(),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            timeout: cfg.timeout,
        }
    }
}

#[path = "redis_fleet.rs"]
mod fleet;

#[path = "redis_backoff.rs"]
mod backoff;

#[path = "redis_refund.rs"]
mod refund;
