//! Per-API failure handling: `retry`, `breaker` and `provider_backoff`.
//!
//! The types only parse their own scalar forms (`100ms..5s`, `20%`, `5xx`); the
//! cross-field rules are in [`problems`], called from `validate.rs`, and the
//! behaviour lives in `tollgate-proxy` (`retry.rs`, `breaker.rs`, `backoff.rs`).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{ByteSize, Duration};

/// Retries of failed upstream attempts (absent: every request is tried once).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Total attempts including the first one (1 disables retries).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// What is retried: status codes (`503`), status classes (`5xx`), `connect` (the connection
    /// could not be made; nothing was sent), `timeout` (no response headers within the per-try
    /// timeout) and `reset` (the upstream closed the connection without answering).
    #[serde(default = "default_retry_on")]
    pub on: Vec<Condition>,
    /// Exponential backoff between attempts: `base..max` (`100ms..5s`) or `{ base, max }`.
    #[serde(default)]
    pub backoff: Backoff,
    /// `full` (a uniformly random wait between 0 and the exponential delay) or `none`.
    #[serde(default)]
    pub jitter: Jitter,
    /// Wait what the upstream's `Retry-After` asks (delta-seconds or HTTP-date) when longer.
    #[serde(default = "yes")]
    pub respect_retry_after: bool,
    /// A `Retry-After` longer than this is not waited for: the upstream's response is returned.
    #[serde(default = "Duration::secs_30")]
    pub max_retry_after: Duration,
    /// Time allowed for one attempt to receive response headers (also capped by
    /// `upstream.response_header_timeout` and by what is left of `deadline`).
    #[serde(default = "Duration::secs_10")]
    pub per_try_timeout: Duration,
    /// Time allowed for all attempts and the waits between them together.
    #[serde(default = "Duration::secs_30")]
    pub deadline: Duration,
    /// Retries may add at most this share of the API's requests (sliding 10 s window).
    #[serde(default = "default_budget")]
    pub budget: Percentage,
    /// Retries per second always allowed regardless of `budget`, so low traffic can still retry.
    #[serde(default = "default_budget_min")]
    pub budget_min_per_second: u32,
    /// Also retry non-idempotent methods (POST, PATCH) without an `Idempotency-Key`.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Request bodies up to this size are kept for replay; larger ones are streamed and not retried.
    #[serde(default = "ByteSize::kib_64")]
    pub max_replay_body: ByteSize,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            on: default_retry_on(),
            backoff: Backoff::default(),
            jitter: Jitter::default(),
            respect_retry_after: true,
            max_retry_after: Duration::secs_30(),
            per_try_timeout: Duration::secs_10(),
            deadline: Duration::secs_30(),
            budget: default_budget(),
            budget_min_per_second: default_budget_min(),
            non_idempotent: false,
            max_replay_body: ByteSize::kib_64(),
        }
    }
}

fn default_attempts() -> u32 {
    3
}
fn default_retry_on() -> Vec<Condition> {
    vec![
        Condition::Status(429),
        Condition::Status(502),
        Condition::Status(503),
        Condition::Status(504),
        Condition::Connect,
        Condition::Timeout,
        Condition::Reset,
    ]
}
fn default_budget() -> Percentage {
    Percentage(20.0)
}
fn default_budget_min() -> u32 {
    10
}
fn yes() -> bool {
    true
}

/// The circuit breaker (absent: no breaker).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    /// Open after this many failures in a row (0: only `failure_rate` opens it).
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// Open when at least this share of the attempts in `window` failed…
    #[serde(default = "default_failure_rate")]
    pub failure_rate: Percentage,
    /// …over this sliding window…
    #[serde(default = "Duration::secs_30")]
    pub window: Duration,
    /// …and the window holds at least this many attempts.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// How long the breaker stays open before letting probes through (half-open).
    #[serde(default = "Duration::secs_30")]
    pub open_for: Duration,
    /// Requests let through at once while half-open.
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
    /// What counts as a failure: status codes, classes (`5xx`), `connect`, `timeout`, `reset`.
    #[serde(default = "default_breaker_on")]
    pub on: Vec<Condition>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive(),
            failure_rate: default_failure_rate(),
            window: Duration::secs_30(),
            min_requests: default_min_requests(),
            open_for: Duration::secs_30(),
            half_open_probes: default_probes(),
            on: default_breaker_on(),
        }
    }
}

fn default_consecutive() -> u32 {
    5
}
fn default_failure_rate() -> Percentage {
    Percentage(50.0)
}
fn default_min_requests() -> u32 {
    20
}
fn default_probes() -> u32 {
    1
}
fn default_breaker_on() -> Vec<Condition> {
    vec![
        Condition::Class(5),
        Condition::Connect,
        Condition::Timeout,
        Condition::Reset,
    ]
}

/// Learning the provider's own rate limit from its responses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderBackoff {
    /// Stop sending to the API while the provider says its quota is exhausted.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The longest back-off taken from one response, whatever the provider asks.
    #[serde(default = "Duration::secs_300")]
    pub cap: Duration,
}

impl Default for ProviderBackoff {
    fn default() -> Self {
        Self {
            enabled: true,
            cap: Duration::secs_300(),
        }
    }
}

/// One upstream outcome a retry or breaker rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// This exact status code.
    Status(u16),
    /// Any status of this class (`5` for `5xx`).
    Class(u8),
    /// The connection could not be made (DNS, TCP or TLS); nothing was sent.
    Connect,
    /// No response headers within the (per-try) timeout.
    Timeout,
    /// The upstream closed or reset the connection without a response.
    Reset,
}

impl Condition {
    /// Whether a response with `status` matches.
    pub fn matches_status(self, status: u16) -> bool {
        match self {
            Self::Status(s) => s == status,
            Self::Class(c) => status / 100 == u16::from(c),
            _ => false,
        }
    }
}

impl std::str::FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "connect" => return Ok(Self::Connect),
            "timeout" => return Ok(Self::Timeout),
            "reset" => return Ok(Self::Reset),
            _ => {}
        }
        if let Some(c) = s.strip_suffix("xx")
            && let Ok(c @ 1..=5) = c.parse::<u8>()
        {
            return Ok(Self::Class(c));
        }
        match s.parse::<u16>() {
            Ok(n @ 100..=599) => Ok(Self::Status(n)),
            _ => Err(format!(
                "invalid condition {s:?}: expected a status (503), a class (5xx), connect, timeout or reset"
            )),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(s) => write!(f, "{s}"),
            Self::Class(c) => write!(f, "{c}xx"),
            Self::Connect => f.write_str("connect"),
            Self::Timeout => f.write_str("timeout"),
            Self::Reset => f.write_str("reset"),
        }
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Status(n) => s.serialize_u16(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string().parse(),
            Raw::S(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Condition {
    fn schema_name() -> Cow<'static, str> {
        "Condition".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "type": "integer", "minimum": 100, "maximum": 599 },
                { "type": "string", "pattern": "^([1-5]xx|connect|timeout|reset|[1-5][0-9][0-9])$" }
            ],
            "description": "A status code (503), a status class (5xx), connect, timeout or reset."
        })
    }
}

/// Exponential backoff bounds: the n-th retry waits up to `base × 2^(n-1)`, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl fmt::Display for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.base, self.max)
    }
}

impl Serialize for Backoff {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Backoff {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Map {
            base: Duration,
            max: Duration,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            M(Map),
        }
        match Raw::deserialize(d)? {
            Raw::M(m) => Ok(Self {
                base: m.base,
                max: m.max,
            }),
            Raw::S(s) => {
                let Some((a, b)) = s.split_once("..") else {
                    return Err(serde::de::Error::custom(format!(
                        "invalid backoff {s:?}: expected base..max such as 100ms..5s"
                    )));
                };
                let base = a.parse().map_err(serde::de::Error::custom)?;
                let max = b.parse().map_err(serde::de::Error::custom)?;
                Ok(Self { base, max })
            }
        }
    }
}

impl JsonSchema for Backoff {
    fn schema_name() -> Cow<'static, str> {
        "Backoff".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "type": "string", "pattern": "^[0-9]+(ms|s|m|h|d)\\.\\.[0-9]+(ms|s|m|h|d)$" },
                {
                    "type": "object",
                    "properties": {
                        "base": { "type": "string", "description": "first retry's delay" },
                        "max": { "type": "string", "description": "longest delay" }
                    },
                    "required": ["base", "max"],
                    "additionalProperties": false
                }
            ],
            "description": "base..max (100ms..5s) or { base, max }."
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Wait a uniformly random time between 0 and the exponential delay ("full jitter").
    #[default]
    Full,
    /// Wait exactly the exponential delay.
    None,
}

/// A percentage written `20%` (or a bare number, 0–100).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percentage(pub f64);

impl Percentage {
    /// As a fraction (20% → 0.2).
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl fmt::Display for Percentage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percentage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percentage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => s
                .trim()
                .strip_suffix('%')
                .unwrap_or(&s)
                .trim()
                .parse::<f64>()
                .map_err(|_| {
                    serde::de::Error::custom(format!("invalid percentage {s:?}: expected e.g. 20%"))
                })?,
        };
        if !(0.0..=100.0).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "percentage {v} is outside 0%..100%"
            )));
        }
        Ok(Self(v))
    }
}

impl JsonSchema for Percentage {
    fn schema_name() -> Cow<'static, str> {
        "Percentage".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "type": "number", "minimum": 0, "maximum": 100 },
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)? ?%$" }
            ],
            "description": "A percentage: 20% (or a bare number from 0 to 100)."
        })
    }
}

/// Cross-field problems of one API's `retry`, `breaker` and `provider_backoff`, as
/// `(key path below the API, message)`.
pub fn problems(
    retry: Option<&Retry>,
    breaker: Option<&Breaker>,
    backoff: &ProviderBackoff,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut err = |k: &str, m: &str| out.push((k.to_owned(), m.to_owned()));
    if let Some(r) = retry {
        if !(1..=10).contains(&r.attempts) {
            err("retry.attempts", "must be between 1 and 10");
        }
        if r.backoff.base.get().is_zero() {
            err("retry.backoff", "the base delay must be longer than 0");
        }
        if r.backoff.base > r.backoff.max {
            err(
                "retry.backoff",
                "the base delay must not exceed the maximum",
            );
        }
        if r.per_try_timeout.get().is_zero() {
            err("retry.per_try_timeout", "must be longer than 0");
        }
        if r.deadline.get().is_zero() {
            err("retry.deadline", "must be longer than 0");
        }
        if r.on.is_empty() && r.attempts > 1 {
            err("retry.on", "must list at least one condition to retry on");
        }
    }
    if let Some(b) = breaker {
        if b.consecutive_failures == 0 && b.failure_rate.0 == 0.0 {
            err(
                "breaker",
                "set consecutive_failures or failure_rate: with both 0 the breaker never opens",
            );
        }
        if b.window.get().is_zero() {
            err("breaker.window", "must be longer than 0");
        }
        if b.open_for.get().is_zero() {
            err("breaker.open_for", "must be longer than 0");
        }
        if b.min_requests == 0 {
            err("breaker.min_requests", "must be at least 1");
        }
        if b.half_open_probes == 0 {
            err("breaker.half_open_probes", "must be at least 1");
        }
        if b.on.is_empty() {
            err("breaker.on", "must list at least one failure condition");
        }
    }
    if backoff.cap.get().is_zero() {
        err("provider_backoff.cap", "must be longer than 0");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse() {
        assert_eq!("503".parse::<Condition>().unwrap(), Condition::Status(503));
        assert_eq!("5xx".parse::<Condition>().unwrap(), Condition::Class(5));
        assert_eq!("reset".parse::<Condition>().unwrap(), Condition::Reset);
        assert!("600".parse::<Condition>().is_err());
        assert!("9xx".parse::<Condition>().is_err());
        assert!(Condition::Class(5).matches_status(502));
        assert!(!Condition::Class(5).matches_status(429));
    }

    #[test]
    fn yaml_forms_and_validation_paths() {
        let yaml = "apis:\n  - name: a\n    hosts: [a.example]\n    retry: { attempts: 2, on: [503, 5xx, connect], backoff: { base: 1s, max: 2s }, budget: 10% }\n    breaker: { on: [500], failure_rate: 25% }\n";
        let cfg = crate::load_str(yaml, "t.yaml").unwrap().config;
        let api = &cfg.apis[0];
        let r = api.retry.as_ref().unwrap();
        assert_eq!(
            r.on,
            [
                Condition::Status(503),
                Condition::Class(5),
                Condition::Connect
            ]
        );
        assert_eq!(r.backoff.base, Duration::from_secs(1));
        assert!((r.budget.fraction() - 0.1).abs() < 1e-9);
        assert_eq!(api.breaker.as_ref().unwrap().on, [Condition::Status(500)]);
        assert!(api.provider_backoff.enabled);

        let bad = "apis:\n  - name: a\n    hosts: [a.example]\n    retry: { attempts: 0, backoff: 5s..1s }\n    breaker: { half_open_probes: 0 }\n    provider_backoff: { cap: 0s }\n";
        let errs = crate::load_str(bad, "t.yaml").unwrap_err().to_string();
        for path in [
            "apis[0].retry.attempts",
            "apis[0].retry.backoff",
            "apis[0].breaker.half_open_probes",
            "apis[0].provider_backoff.cap",
        ] {
            assert!(errs.contains(path), "{path} missing from {errs}");
        }
        let unknown = "apis:\n  - name: a\n    hosts: [a.example]\n    retry: { on: [teapot] }\n";
        assert!(crate::load_str(unknown, "t.yaml").is_err());
    }

    #[test]
    fn backoff_and_percentage_forms() {
        let b: Backoff = serde_json::from_str("\"100ms..5s\"").unwrap();
        assert_eq!(b, Backoff::default());
        let b: Backoff = serde_json::from_str(r#"{"base":"1s","max":"2s"}"#).unwrap();
        assert_eq!(b.max, Duration::from_secs(2));
        assert!(serde_json::from_str::<Backoff>("\"100ms\"").is_err());
        let p: Percentage = serde_json::from_str("\"20%\"").unwrap();
        assert!((p.fraction() - 0.2).abs() < 1e-9);
        assert!(serde_json::from_str::<Percentage>("\"120%\"").is_err());
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"1s..2s\"");
    }
}
