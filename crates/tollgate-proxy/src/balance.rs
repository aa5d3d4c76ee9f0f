//! Upstream groups (`apis[].upstream_group`): picking the target of each attempt.
//!
//! A route API with a group names several targets. Every upstream attempt picks one that is
//! *available* — healthy by its active health checks (health.rs) and not ejected by passive
//! checking — preferring targets this request has not tried yet:
//! - `round_robin`: a weighted sequence (weight 3 appears three times, interleaved) walked by one
//!   atomic counter; unavailable targets are skipped.
//! - `least_requests`: the fewest attempts in flight relative to weight; ties rotate.
//! - `hash`: a consistent-hash ring (40 points per unit of weight) keyed by the consumer name or
//!   a request header; the first available target clockwise from the key wins, so removing a
//!   target moves only its keys. A request without the key is balanced round robin.
//!
//! Passive ejection: `passive.consecutive_failures` attempts in a row that end in a connect
//! error, reset, timeout or 5xx take the target out for `passive.cooldown`.
//!
//! Group targets are reached through a separate pooled client whose network guard allows each
//! listed IP-literal target's exact `ip:port` (so `http://10.0.0.5:9000` works while the guard
//! still blocks the private range for every other destination). Host-name targets are resolved
//! and checked by the normal guard rules.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use http::HeaderMap;
use http::uri::{Authority, Uri};
use tollgate_config::upstreams::{Balance, HashOn, HealthCheck, Passive};
use tollgate_telemetry::{Metrics, TargetHandles};

use crate::breaker::Outcome;
use crate::state::BuildError;
use crate::upstream::Upstream;

/// Ring points per unit of weight.
const POINTS_PER_WEIGHT: u32 = 40;

/// One backend of a group and its live state.
pub struct TargetState {
    /// `host:port` (IPv6 in brackets): the metric label and the `Host` header.
    pub label: Arc<str>,
    pub authority: Authority,
    weight: u32,
    healthy: AtomicBool,
    /// Milliseconds since the group's epoch until which the target is ejected.
    ejected_until: AtomicU64,
    failures: AtomicU32,
    inflight: AtomicUsize,
    pub(crate) metrics: OnceLock<TargetHandles>,
}

/// One API's group.
pub struct Group {
    pub api: Arc<str>,
    pub https: bool,
    pub targets: Vec<TargetState>,
    balance: Balance,
    hash_on: HashOn,
    rr: Vec<usize>,
    next: AtomicUsize,
    ring: Vec<(u64, usize)>,
    passive: Passive,
    pub(crate) health: Option<HealthCheck>,
    epoch: Instant,
    /// The client whose guard allows exactly the listed targets.
    pub client: Arc<Upstream>,
}

/// The groups of one configuration, by API name, and their health-check tasks (aborted when
/// the configuration is dropped after a reload).
#[derive(Default)]
pub struct Groups {
    by_api: HashMap<Box<str>, Arc<Group>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    started: AtomicBool,
}

impl Drop for Groups {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        for t in tasks.drain(..) {
            t.abort();
        }
    }
}

/// FNV-1a: stable across processes and releases (the ring must not move on restart).
fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Spread the low-entropy tail (FNV is weak on short keys).
    let mut s = std::collections::hash_map::DefaultHasher::new();
    s.write_u64(h);
    s.finish()
}

impl Groups {
    /// Builds the groups of `cfg`. The group client shares the global upstream settings.
    pub fn build(
        cfg: &tollgate_config::Config,
        own_listeners: &[std::net::SocketAddr],
    ) -> Result<Groups, BuildError> {
        let mut out = Groups::default();
        let apis: Vec<_> = cfg
            .apis
            .iter()
            .filter_map(|a| a.upstream_group.as_ref().map(|g| (a, g)))
            .collect();
        if apis.is_empty() {
            return Ok(out);
        }
        // The guard of the group client: the global rules plus each IP-literal target, except
        // Tollgate's own listeners (a target there would loop requests back into the gateway;
        // the guard keeps refusing it with `own_listener`).
        let local = crate::state::wildcard_local_addrs(own_listeners);
        let is_own = |ip: std::net::IpAddr, port: u16| {
            let ip = ip.to_canonical();
            own_listeners.iter().any(|l| {
                l.port() == port
                    && (l.ip().to_canonical() == ip
                        || (l.ip().is_unspecified()
                            && (ip.is_loopback() || ip.is_unspecified() || local.contains(&ip))))
            })
        };
        let mut guard_cfg = cfg.network_guard.clone();
        for (_, g) in &apis {
            for t in &g.targets {
                if let Ok((_, host, port)) = tollgate_config::upstreams::parse_target(&t.url)
                    && let Ok(ip) = host.parse::<std::net::IpAddr>()
                    && !is_own(ip, port)
                {
                    guard_cfg
                        .allow
                        .push(std::net::SocketAddr::new(ip, port).to_string());
                }
            }
        }
        let guard = crate::guard::NetworkGuard::new(&guard_cfg, own_listeners)
            .map_err(BuildError::Guard)?
            .with_local_addrs(local.iter().copied());
        let resolver =
            crate::dns::Resolver::new(&cfg.dns).map_err(|e| BuildError::Dns(e.to_string()))?;
        let tls = crate::tls::client_config(&cfg.upstream)?;
        let client = Arc::new(Upstream::new(
            &cfg.upstream,
            Arc::new(resolver),
            Arc::new(guard),
            tls,
        ));
        for (api, g) in apis {
            let mut targets = Vec::with_capacity(g.targets.len());
            let mut https = false;
            for t in &g.targets {
                let Ok((s, host, port)) = tollgate_config::upstreams::parse_target(&t.url) else {
                    continue;
                };
                https = s;
                let label = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                let Ok(authority) = label.parse::<Authority>() else {
                    continue;
                };
                targets.push(TargetState {
                    label: Arc::from(label),
                    authority,
                    weight: t.weight.max(1),
                    healthy: AtomicBool::new(true),
                    ejected_until: AtomicU64::new(0),
                    failures: AtomicU32::new(0),
                    inflight: AtomicUsize::new(0),
                    metrics: OnceLock::new(),
                });
            }
            let max_w = targets.iter().map(|t| t.weight).max().unwrap_or(1);
            let mut rr = Vec::new();
            for round in 0..max_w {
                for (i, t) in targets.iter().enumerate() {
                    if t.weight > round {
                        rr.push(i);
                    }
                }
            }
            let mut ring = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                for n in 0..t.weight * POINTS_PER_WEIGHT {
                    ring.push((fnv(format!("{}#{n}", t.label).as_bytes()), i));
                }
            }
            ring.sort_unstable();
            let group = Group {
                api: Arc::from(api.name.as_str()),
                https,
                targets,
                balance: g.balance,
                hash_on: g.hash_key(),
                rr,
                next: AtomicUsize::new(0),
                ring,
                passive: g.passive.clone(),
                health: g.health_check.clone(),
                epoch: Instant::now(),
                client: client.clone(),
            };
            out.by_api
                .insert(api.name.clone().into_boxed_str(), Arc::new(group));
        }
        Ok(out)
    }

    /// The group of API `api`, if it has one.
    pub fn get(&self, api: &str) -> Option<&Arc<Group>> {
        self.by_api.get(api)
    }

    /// Starts the health-check tasks and metric handles, once (later calls do nothing). Call
    /// from within the runtime after this configuration became active.
    pub fn start(&self, metrics: &Arc<Metrics>) {
        if self.by_api.is_empty() || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        for g in self.by_api.values() {
            for t in &g.targets {
                let h = metrics.upstream_target(&g.api, &t.label);
                h.healthy.set(1);
                let _ = t.metrics.set(h);
            }
            if g.health.is_some() {
                let task = tokio::spawn(crate::health::run(g.clone()));
                tasks.push(task.abort_handle());
            }
        }
    }
}

/// The attempt slot of a picked target: counts it in flight until dropped.
pub struct Picked {
    group: Arc<Group>,
    pub index: usize,
}

impl Drop for Picked {
    fn drop(&mut self) {
        if let Some(t) = self.group.targets.get(self.index) {
            t.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Picked {
    /// `uri` with this target's authority (scheme and path kept).
    pub fn uri(&self, uri: &Uri) -> Option<Uri> {
        let t = self.group.targets.get(self.index)?;
        let mut parts = uri.clone().into_parts();
        parts.authority = Some(t.authority.clone());
        Uri::from_parts(parts).ok()
    }

    pub fn target(&self) -> Option<&TargetState> {
        self.group.targets.get(self.index)
    }
}

/// A request's balancing context: its group and hash key.
pub struct Pick {
    pub group: Arc<Group>,
    key: Option<u64>,
}

impl Pick {
    /// The context for one request (`consumer` and `headers` feed `hash`).
    pub fn new(group: Arc<Group>, consumer: Option<&str>, headers: &HeaderMap) -> Self {
        let key = match (&group.balance, &group.hash_on) {
            (Balance::Hash, HashOn::Consumer) => consumer.map(|c| fnv(c.as_bytes())),
            (Balance::Hash, HashOn::Header(name)) => {
                headers.get(name.as_str()).map(|v| fnv(v.as_bytes()))
            }
            _ => None,
        };
        Self { group, key }
    }

    /// Picks an available target, preferring one not in `tried`; `None` when none is available.
    pub fn pick(&self, tried: &[usize]) -> Option<Picked> {
        let g = &self.group;
        let i = g
            .choose(self.key, tried)
            .or_else(|| g.choose(self.key, &[]))?;
        let t = g.targets.get(i)?;
        t.inflight.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            group: g.clone(),
            index: i,
        })
    }

    /// Whether an available target outside `tried` exists.
    pub fn has_untried(&self, tried: &[usize]) -> bool {
        self.group.choose(self.key, tried).is_some()
    }
}

impl Group {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn available(&self, i: usize, now: u64) -> bool {
        self.targets.get(i).is_some_and(|t| {
            t.healthy.load(Ordering::Relaxed) && t.ejected_until.load(Ordering::Relaxed) <= now
        })
    }

    fn choose(&self, key: Option<u64>, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let ok = |i: usize| !tried.contains(&i) && self.available(i, now);
        match (self.balance, key) {
            (Balance::Hash, Some(k)) => {
                let n = self.ring.len();
                let start = self.ring.partition_point(|(h, _)| *h < k);
                (0..n)
                    .filter_map(|s| self.ring.get((start + s) % n))
                    .map(|(_, i)| *i)
                    .find(|i| ok(*i))
            }
            (Balance::LeastRequests, _) => {
                let n = self.targets.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<(usize, usize, u32)> = None;
                for s in 0..n {
                    let i = (start + s) % n;
                    let Some(t) = self.targets.get(i) else {
                        continue;
                    };
                    if !ok(i) {
                        continue;
                    }
                    let load = t.inflight.load(Ordering::Relaxed);
                    // load/weight < best_load/best_weight, without division.
                    let better = best.is_none_or(|(_, bl, bw)| {
                        (load as u128) * u128::from(bw) < (bl as u128) * u128::from(t.weight)
                    });
                    if better {
                        best = Some((i, load, t.weight));
                    }
                }
                best.map(|(i, _, _)| i)
            }
            _ => {
                let n = self.rr.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .filter_map(|s| self.rr.get((start + s) % n))
                    .copied()
                    .find(|i| ok(*i))
            }
        }
    }

    /// Records one attempt's outcome on target `i` (passive health).
    pub fn record(&self, i: usize, outcome: Option<Outcome>) {
        let Some(t) = self.targets.get(i) else { return };
        let failed = match outcome {
            Some(Outcome::Status(s)) => s >= 500,
            Some(Outcome::Connect | Outcome::Reset | Outcome::Timeout) => true,
            // Client or guard faults say nothing about the target.
            None => return,
        };
        if let Some(m) = t.metrics.get() {
            if failed {
                m.failure.inc();
            } else {
                m.success.inc();
            }
        }
        if !failed {
            if t.failures.swap(0, Ordering::Relaxed) > 0
                && let Some(m) = t.metrics.get()
            {
                m.healthy.set(i64::from(t.healthy.load(Ordering::Relaxed)));
            }
            return;
        }
        let limit = self.passive.consecutive_failures;
        let n = t.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if limit > 0 && n >= limit {
            t.failures.store(0, Ordering::Relaxed);
            let cooldown =
                u64::try_from(self.passive.cooldown.get().as_millis()).unwrap_or(u64::MAX);
            t.ejected_until
                .store(self.now_ms().saturating_add(cooldown), Ordering::Relaxed);
            if let Some(m) = t.metrics.get() {
                m.ejections.inc();
                m.healthy.set(0);
            }
            tracing::warn!(api = %self.api, target = %t.label, failures = n, cooldown_ms = cooldown, "upstream target ejected");
        }
    }

    /// Sets the active health state of target `i` (health.rs).
    pub(crate) fn set_healthy(&self, i: usize, healthy: bool) {
        let Some(t) = self.targets.get(i) else { return };
        let was = t.healthy.swap(healthy, Ordering::Relaxed);
        if healthy && !was {
            // Back from unhealthy: the health checks vouch for it again, so an ejection from
            // the failures that led here ends too.
            t.ejected_until.store(0, Ordering::Relaxed);
            t.failures.store(0, Ordering::Relaxed);
        }
        if was != healthy {
            tracing::warn!(api = %self.api, target = %t.label, healthy, "upstream target health changed");
        }
        if let Some(m) = t.metrics.get() {
            let up = healthy && self.available(i, self.now_ms());
            m.healthy.set(i64::from(up));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(balance: Balance, weights: &[u32]) -> Arc<Group> {
        let targets: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| serde_json::json!({ "url": format!("http://10.0.0.{}:80", i + 1), "weight": w }))
            .collect();
        let b = match balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequests => "least_requests",
            Balance::Hash => "hash",
        };
        let cfg: tollgate_config::Config = serde_json::from_value(serde_json::json!({
            "apis": [{ "name": "a", "route": "/a", "upstream_group": { "targets": targets, "balance": b,
                "passive": { "consecutive_failures": 2, "cooldown": "1h" } } }]
        }))
        .unwrap();
        let groups = Groups::build(&cfg, &[]).unwrap();
        groups.get("a").unwrap().clone()
    }

    #[test]
    fn listed_targets_pass_the_guard_except_own_listeners() {
        let cfg: tollgate_config::Config = serde_json::from_value(serde_json::json!({
            "apis": [{ "name": "a", "route": "/a", "upstream_group": { "targets": [
                { "url": "http://10.1.2.3:9000" }, { "url": "http://127.0.0.1:8080" }
            ] } }]
        }))
        .unwrap();
        let own: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let groups = Groups::build(&cfg, &[own]).unwrap();
        let guard = &groups.get("a").unwrap().client.guard;
        assert_eq!(guard.check("10.1.2.3:9000".parse().unwrap()), Ok(()));
        // Only the listed port; and the gateway itself stays refused.
        assert!(guard.check("10.1.2.3:9001".parse().unwrap()).is_err());
        assert_eq!(
            guard.check(own),
            Err(crate::guard::GuardDenial::OwnListener)
        );
    }

    #[test]
    fn weighted_round_robin_skips_ejected_targets() {
        let g = group(Balance::RoundRobin, &[1, 2]);
        let p = Pick::new(g.clone(), None, &HeaderMap::new());
        let picks: Vec<usize> = (0..6).map(|_| p.pick(&[]).unwrap().index).collect();
        assert_eq!(picks.iter().filter(|i| **i == 1).count(), 4);
        g.record(1, Some(Outcome::Connect));
        g.record(1, Some(Outcome::Status(503)));
        let picks: Vec<usize> = (0..6).map(|_| p.pick(&[]).unwrap().index).collect();
        assert_eq!(picks, [0; 6]);
        g.set_healthy(0, false);
        assert!(p.pick(&[]).is_none());
    }

    #[test]
    fn least_requests_prefers_the_idle_target() {
        let g = group(Balance::LeastRequests, &[1, 1, 1]);
        let p = Pick::new(g, None, &HeaderMap::new());
        let a = p.pick(&[]).unwrap();
        let b = p.pick(&[]).unwrap();
        let c = p.pick(&[]).unwrap();
        let mut seen = vec![a.index, b.index, c.index];
        seen.sort();
        assert_eq!(seen, [0, 1, 2]);
        let keep = b.index;
        drop(b);
        assert_eq!(p.pick(&[]).unwrap().index, keep);
        drop((a, c));
    }

    #[test]
    fn hash_is_sticky_and_moves_only_the_removed_targets_keys() {
        let g = group(Balance::Hash, &[1, 1, 1]);
        let before: Vec<usize> = (0..300)
            .map(|k| {
                let p = Pick::new(g.clone(), Some(&format!("c{k}")), &HeaderMap::new());
                p.pick(&[]).unwrap().index
            })
            .collect();
        for i in 0..3 {
            let n = before.iter().filter(|x| **x == i).count();
            assert!(n > 30, "target {i} got {n} of 300 keys");
        }
        g.set_healthy(2, false);
        for (k, was) in before.iter().enumerate() {
            let p = Pick::new(g.clone(), Some(&format!("c{k}")), &HeaderMap::new());
            let now = p.pick(&[]).unwrap().index;
            if *was != 2 {
                assert_eq!(now, *was, "key c{k} moved");
            } else {
                assert_ne!(now, 2);
            }
        }
    }
}
