//! Upstream groups (`apis[].upstream_group`): several backend targets behind one route, with
//! load balancing, active health checks and passive ejection.
//!
//! The types parse only their own forms; [`problems`] holds the cross-field rules (called from
//! `validate.rs`); the behaviour lives in `tollgate-proxy` (`balance.rs`, `health.rs`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// Several targets for one route API (instead of a single `upstream` URL).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamGroup {
    /// The backends: `http(s)://host[:port]` without a path, all with the same scheme. Their
    /// addresses are allowed by the network guard for this group only (private ranges and
    /// loopback included), exactly as listed.
    pub targets: Vec<GroupTarget>,
    /// `round_robin` (weighted, default), `least_requests` or `hash` (consistent hashing).
    #[serde(default)]
    pub balance: Balance,
    /// What `hash` hashes: `consumer` (default) or `header:<name>`.
    #[serde(default)]
    pub hash_on: Option<String>,
    /// Active health checks. Absent: targets are only judged by live traffic (`passive`).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection: consecutive connect errors or 5xx responses take a target out of
    /// rotation for a cool-down.
    #[serde(default)]
    pub passive: Passive,
}

/// One backend of a group.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupTarget {
    /// `http://10.0.0.5:9000` (no path, query or credentials).
    pub url: String,
    /// Relative share of traffic, 1–100.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// How a group picks a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastRequests,
    Hash,
}

/// Active health checks: `GET <path>` on every target every `interval`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path probed with GET; a 2xx or 3xx answer within `timeout` is a success.
    #[serde(default = "slash")]
    pub path: String,
    #[serde(default = "Duration::secs_5")]
    pub interval: Duration,
    #[serde(default = "one_second")]
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy target back.
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark a target unhealthy.
    #[serde(default = "two")]
    pub unhealthy_threshold: u32,
}

fn slash() -> String {
    "/".to_owned()
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn two() -> u32 {
    2
}

/// Passive ejection settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Passive {
    /// Consecutive connect errors or 5xx responses that eject a target (0: never).
    #[serde(default = "three")]
    pub consecutive_failures: u32,
    /// How long an ejected target gets no traffic.
    #[serde(default = "Duration::secs_10")]
    pub cooldown: Duration,
}

fn three() -> u32 {
    3
}

impl Default for Passive {
    fn default() -> Self {
        Self {
            consecutive_failures: three(),
            cooldown: Duration::secs_10(),
        }
    }
}

/// What `hash` hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Consumer,
    /// A request header (lower-case name).
    Header(String),
}

impl UpstreamGroup {
    /// The parsed `hash_on` (`consumer` when absent or invalid; [`problems`] reports the latter).
    pub fn hash_key(&self) -> HashOn {
        match self.hash_on.as_deref() {
            Some(h) => match h.strip_prefix("header:") {
                Some(name) if !name.is_empty() => HashOn::Header(name.to_ascii_lowercase()),
                _ => HashOn::Consumer,
            },
            None => HashOn::Consumer,
        }
    }
}

/// Splits a target URL into (scheme is https, host without brackets, port).
pub fn parse_target(url: &str) -> Result<(bool, String, u16), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("target {url:?} is not a valid URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(format!(
                "target {url:?} must start with http:// or https://"
            ));
        }
    };
    let auth = uri
        .authority()
        .ok_or_else(|| format!("target {url:?} has no host"))?;
    if auth.as_str().contains('@') {
        return Err("a target must not carry credentials".to_owned());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "target {url:?} must be scheme://host[:port] without a path or query"
        ));
    }
    let host = auth.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("target {url:?} has no host"));
    }
    let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((https, host.to_ascii_lowercase(), port))
}

/// Cross-field problems of one group, as (key path below `upstream_group`, message).
pub fn problems(g: &UpstreamGroup) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if g.targets.is_empty() {
        out.push((
            "targets".to_owned(),
            "a group needs at least one target".to_owned(),
        ));
    }
    let mut scheme = None;
    let mut seen = Vec::new();
    for (i, t) in g.targets.iter().enumerate() {
        match parse_target(&t.url) {
            Ok((https, host, port)) => {
                if *scheme.get_or_insert(https) != https {
                    out.push((
                        format!("targets[{i}].url"),
                        "all targets of a group must use the same scheme".to_owned(),
                    ));
                }
                if seen.contains(&(host.clone(), port)) {
                    out.push((
                        format!("targets[{i}].url"),
                        "this target is listed twice".to_owned(),
                    ));
                }
                seen.push((host, port));
            }
            Err(m) => out.push((format!("targets[{i}].url"), m)),
        }
        if !(1..=100).contains(&t.weight) {
            out.push((
                format!("targets[{i}].weight"),
                "weight must be between 1 and 100".to_owned(),
            ));
        }
    }
    if let Some(h) = &g.hash_on {
        let ok = h == "consumer"
            || h.strip_prefix("header:")
                .is_some_and(|n| http::HeaderName::from_bytes(n.as_bytes()).is_ok());
        if !ok {
            out.push((
                "hash_on".to_owned(),
                format!("{h:?}: expected `consumer` or `header:<name>`"),
            ));
        } else if g.balance != Balance::Hash {
            out.push((
                "hash_on".to_owned(),
                "`hash_on` needs `balance: hash`".to_owned(),
            ));
        }
    }
    if let Some(hc) = &g.health_check {
        if !hc.path.starts_with('/') || hc.path.parse::<http::uri::PathAndQuery>().is_err() {
            out.push((
                "health_check.path".to_owned(),
                "must be a path starting with '/'".to_owned(),
            ));
        }
        if hc.interval.get() < std::time::Duration::from_millis(100) {
            out.push((
                "health_check.interval".to_owned(),
                "must be at least 100ms".to_owned(),
            ));
        }
        if hc.timeout.get().is_zero() || hc.timeout.get() > hc.interval.get() {
            out.push((
                "health_check.timeout".to_owned(),
                "must be positive and not longer than `interval`".to_owned(),
            ));
        }
        for (k, v) in [
            ("healthy_threshold", hc.healthy_threshold),
            ("unhealthy_threshold", hc.unhealthy_threshold),
        ] {
            if v == 0 {
                out.push((format!("health_check.{k}"), "must be at least 1".to_owned()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(urls: &[&str]) -> UpstreamGroup {
        UpstreamGroup {
            targets: urls
                .iter()
                .map(|u| GroupTarget {
                    url: (*u).to_owned(),
                    weight: 1,
                })
                .collect(),
            balance: Balance::RoundRobin,
            hash_on: None,
            health_check: None,
            passive: Passive::default(),
        }
    }

    #[test]
    fn targets_are_checked() {
        assert!(problems(&group(&["http://10.0.0.1:9000", "http://[::1]:9001"])).is_empty());
        let p = problems(&group(&[
            "http://a:1/base",
            "https://b:2",
            "http://u:p@c",
            "http://b:2",
            "http://b:2",
        ]));
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "targets[0].url",
                "targets[2].url",
                "targets[3].url",
                "targets[3].url",
                "targets[4].url",
                "targets[4].url"
            ]
        );
        assert_eq!(
            parse_target("http://[::1]:9001").unwrap(),
            (false, "::1".to_owned(), 9001)
        );
        let mut g = group(&["http://a"]);
        g.hash_on = Some("header:x-user".to_owned());
        assert_eq!(problems(&g)[0].0, "hash_on");
        g.balance = Balance::Hash;
        assert!(problems(&g).is_empty());
        assert_eq!(g.hash_key(), HashOn::Header("x-user".to_owned()));
    }
}
