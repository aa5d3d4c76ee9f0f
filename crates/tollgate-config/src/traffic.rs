//! Config types for sharing scarce capacity: guaranteed `shares` of a limit, what a limit does
//! when it is exhausted (`on_limit`: reject or queue), and per-API `concurrency` limits.
//! Semantics are in docs/stages/limits.md (shares), docs/stages/queueing.md and
//! docs/stages/concurrency.md.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::resilience::Percentage;
use crate::units::Duration;
use crate::{Limit, LimitAlgorithm, LimitBy};

/// What happens to a request a limit (or a concurrency limit) refuses: `reject` (429 at once) or
/// `{ queue: <duration>, max_queue: <n> }` (wait in a bounded queue, released in priority order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnLimit {
    #[default]
    Reject,
    Queue(QueueSpec),
}

impl OnLimit {
    /// The queue settings, when the limit queues.
    pub fn queue(&self) -> Option<&QueueSpec> {
        match self {
            Self::Reject => None,
            Self::Queue(q) => Some(q),
        }
    }
}

/// How long a refused request may wait for capacity, and how many may wait at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// Longest wait; a request still waiting then is answered 429.
    pub queue: Duration,
    /// Most requests waiting at once (per API and limit); one more is answered 429 at once.
    /// Default 100.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
}

fn default_max_queue() -> u32 {
    100
}

impl Serialize for OnLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Reject => s.serialize_str("reject"),
            Self::Queue(q) => q.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for OnLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OnLimit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`reject` or `{ queue: <duration>, max_queue: <n> }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OnLimit, E> {
                match v.trim() {
                    "reject" => Ok(OnLimit::Reject),
                    other => Err(E::custom(format!(
                        "invalid on_limit {other:?}: expected `reject` or `{{ queue: 5s }}`"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OnLimit, A::Error> {
                QueueSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(OnLimit::Queue)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for OnLimit {
    fn schema_name() -> Cow<'static, str> {
        "OnLimit".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let queue = g.subschema_for::<QueueSpec>();
        json_schema!({
            "oneOf": [{ "const": "reject" }, queue],
            "description": "`reject` (429 at once) or `{ queue: <duration>, max_queue: <n> }`."
        })
    }
}

/// What a consumer of a shared limit may use beyond its guarantee (`borrow`): `true` (the
/// default), `unallocated` or `false`. Semantics in docs/stages/shares.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Borrow {
    /// `false`: never more than its guarantee.
    Off,
    /// `unallocated`: also the capacity no guarantee covers; every other consumer's unused
    /// guarantee stays reserved.
    Unallocated,
    /// `true`: also the unused guarantees of idle consumers (not charged or refused in this
    /// window or the previous one).
    #[default]
    Idle,
}

impl Serialize for Borrow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_bool(false),
            Self::Unallocated => s.serialize_str("unallocated"),
            Self::Idle => s.serialize_bool(true),
        }
    }
}

impl<'de> Deserialize<'de> for Borrow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(true) => Ok(Self::Idle),
            Raw::B(false) => Ok(Self::Off),
            // Strings too, so a value substituted from the environment works.
            Raw::S(s) => match s.trim() {
                "true" => Ok(Self::Idle),
                "false" => Ok(Self::Off),
                "unallocated" => Ok(Self::Unallocated),
                other => Err(de::Error::custom(format!(
                    "invalid borrow {other:?}: expected true, false or `unallocated`"
                ))),
            },
        }
    }
}

impl JsonSchema for Borrow {
    fn schema_name() -> Cow<'static, str> {
        "Borrow".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [{ "type": "boolean" }, { "const": "unallocated" }],
            "description": "`true` (default): a consumer may also use capacity no guarantee covers and idle consumers' unused guarantees; `unallocated`: only capacity no guarantee covers; `false`: only its own guarantee."
        })
    }
}

/// The share of consumers a limit's `shares` does not list: a percentage they share as one
/// group, or `deny`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DefaultShare {
    Share(Percentage),
    Deny,
}

impl Serialize for DefaultShare {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Share(p) => p.serialize(s),
            Self::Deny => s.serialize_str("deny"),
        }
    }
}

impl<'de> Deserialize<'de> for DefaultShare {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        let p = match Raw::deserialize(d)? {
            Raw::S(s) if s.trim() == "deny" => return Ok(Self::Deny),
            Raw::N(n) => Percentage::deserialize(de::value::F64Deserializer::<D::Error>::new(n))?,
            Raw::S(s) => {
                Percentage::deserialize(de::value::StringDeserializer::<D::Error>::new(s.clone()))
                    .map_err(|_| {
                    de::Error::custom(format!(
                        "invalid default_share {s:?}: expected a percentage such as 10% or `deny`"
                    ))
                })?
            }
        };
        Ok(Self::Share(p))
    }
}

impl JsonSchema for DefaultShare {
    fn schema_name() -> Cow<'static, str> {
        "DefaultShare".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let pct = g.subschema_for::<Percentage>();
        json_schema!({
            "oneOf": [pct, { "const": "deny" }],
            "description": "The share unlisted consumers get together, or `deny`."
        })
    }
}

/// How many requests of an API may be in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Most requests in flight to this API at once. Absent: no API-wide bound.
    #[serde(default)]
    pub max: Option<u32>,
    /// Most requests in flight per consumer. Absent: no per-consumer bound.
    #[serde(default)]
    pub per_consumer: Option<u32>,
    /// `reject` (default: 429 `concurrency_limited` at once) or `{ queue: 2s, max_queue: 100 }`.
    #[serde(default)]
    pub on_limit: OnLimit,
}

/// Shares in millionths (25% → 250 000), the unit `tollgate_state::guarantee` takes.
pub fn share_millionths(p: Percentage) -> u32 {
    // Saturating float→int cast is the intent; validation keeps p within 0..=100.
    (p.0 * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32
}

fn on_limit_problems(at: &str, on: &OnLimit, out: &mut Vec<(String, String)>) {
    if let OnLimit::Queue(q) = on {
        if q.queue.get().is_zero() {
            out.push((format!("{at}.queue"), "must be longer than 0".into()));
        }
        if q.max_queue == 0 {
            out.push((format!("{at}.max_queue"), "must be at least 1".into()));
        }
    }
}

/// Problems of one limit's `shares`, `borrow`, `default_share` and `on_limit`, as
/// `(key path below the limit, message)`. `consumers` are the configured consumer names (plus
/// `anonymous` when unknown callers are let through).
pub fn limit_problems(l: &Limit, consumers: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    on_limit_problems("on_limit", &l.on_limit, &mut out);
    let Some(shares) = &l.shares else {
        if l.borrow.is_some() {
            out.push(("borrow".into(), "only applies with `shares`".into()));
        }
        if l.default_share.is_some() {
            out.push(("default_share".into(), "only applies with `shares`".into()));
        }
        return out;
    };
    if shares.is_empty() {
        out.push((
            "shares".into(),
            "must name at least one consumer (or remove `shares`)".into(),
        ));
    }
    if l.algorithm == LimitAlgorithm::Gcra {
        out.push((
            "shares".into(),
            "shares need `algorithm: fixed` or `sliding`; a gcra (token bucket) limit cannot be shared".into(),
        ));
    }
    if l.by == LimitBy::Consumer {
        out.push((
            "shares".into(),
            "shares split one counter between consumers; with `by: consumer` every consumer already has its own".into(),
        ));
    }
    let mut total = 0.0;
    for (name, p) in shares {
        if !consumers.contains(&name.as_str()) {
            out.push((
                format!("shares.{name}"),
                format!("{name:?} is not a configured consumer"),
            ));
        }
        total += p.0;
    }
    if let Some(DefaultShare::Share(p)) = l.default_share {
        total += p.0;
    }
    if total > 100.0 + 1e-9 {
        out.push((
            "shares".into(),
            format!("the shares (with default_share) add up to {total}%, more than 100%"),
        ));
    }
    out
}

/// Problems of an API's `concurrency`, as `(key path below the API, message)`.
pub fn concurrency_problems(c: &Concurrency) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if c.max.is_none() && c.per_consumer.is_none() {
        out.push((
            "concurrency".into(),
            "set `max`, `per_consumer` or both".into(),
        ));
    }
    if c.max == Some(0) {
        out.push(("concurrency.max".into(), "must be at least 1".into()));
    }
    if c.per_consumer == Some(0) {
        out.push((
            "concurrency.per_consumer".into(),
            "must be at least 1".into(),
        ));
    }
    if let (Some(m), Some(p)) = (c.max, c.per_consumer)
        && p > m
    {
        out.push((
            "concurrency.per_consumer".into(),
            format!("must not exceed `max` ({m})"),
        ));
    }
    on_limit_problems("concurrency.on_limit", &c.on_limit, &mut out);
    out
}

/// A limit's `time_zone` (`per: 1d` and `per: month`): a fixed UTC offset or an IANA zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeZoneSetting {
    /// Minutes east of UTC (`+02:00` → 120; `UTC` and `Z` → 0).
    Offset(i32),
    /// A name the bundled IANA time-zone database knows (`Europe/Berlin`).
    Iana(String),
}

/// Parses a `time_zone`: a fixed offset (`+02:00`, `-0530`, `Z`, `UTC`, see
/// [`crate::parse_utc_offset`]) or an IANA zone name, checked against the tz database bundled
/// into the binary (so `tollgate validate` rejects a misspelt zone).
pub fn parse_time_zone(s: &str) -> Result<TimeZoneSetting, String> {
    let t = s.trim();
    if t.starts_with(['+', '-']) || t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        return crate::parse_utc_offset(t).map(TimeZoneSetting::Offset);
    }
    match jiff::tz::TimeZone::get(t) {
        Ok(_) => Ok(TimeZoneSetting::Iana(t.to_owned())),
        Err(_) => Err(format!(
            "unknown time zone {s:?}: expected an IANA name such as Europe/Berlin or America/New_York, or a UTC offset such as +02:00"
        )),
    }
}

/// The shares map type of a limit: consumer name → guaranteed share. Sorted by name, which is
/// also the order of the share groups.
pub type Shares = BTreeMap<String, Percentage>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_limit_forms() {
        let r: OnLimit = serde_json::from_str("\"reject\"").unwrap();
        assert_eq!(r, OnLimit::Reject);
        let q: OnLimit = serde_json::from_str(r#"{"queue":"5s"}"#).unwrap();
        assert_eq!(
            q,
            OnLimit::Queue(QueueSpec {
                queue: Duration::from_secs(5),
                max_queue: 100
            })
        );
        assert!(serde_json::from_str::<OnLimit>("\"wait\"").is_err());
        assert!(serde_json::from_str::<OnLimit>(r#"{"queue":"5s","bogus":1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"queue":"5s","max_queue":100}"#
        );
    }

    #[test]
    fn default_share_forms() {
        let d: DefaultShare = serde_json::from_str("\"deny\"").unwrap();
        assert_eq!(d, DefaultShare::Deny);
        let d: DefaultShare = serde_json::from_str("\"10%\"").unwrap();
        assert_eq!(d, DefaultShare::Share(Percentage(10.0)));
        let d: DefaultShare = serde_json::from_str("12.5").unwrap();
        assert_eq!(d, DefaultShare::Share(Percentage(12.5)));
        assert!(serde_json::from_str::<DefaultShare>("\"lots\"").is_err());
        assert!(serde_json::from_str::<DefaultShare>("\"120%\"").is_err());
    }

    /// (path, message) of every error loading `src`.
    fn problems(src: &str) -> Vec<(String, String)> {
        match crate::load_str(src, "t.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    const CONSUMERS: &str = "consumers:
  - { name: acme, identify: { header: { name: x-c, value: acme } }, priority: 10 }
  - { name: others, identify: { header: { name: x-c, value: others } } }
";

    #[test]
    fn yaml_forms_load() {
        let src = format!(
            "{CONSUMERS}apis:
  - name: a
    hosts: [a.example.com]
    concurrency: {{ max: 10, per_consumer: 2, on_limit: {{ queue: 2s }} }}
    limits:
      - name: q
        requests: 100
        per: 1h
        shares: {{ acme: 25%, others: 50 }}
        borrow: false
        default_share: deny
        on_limit: {{ queue: 5s, max_queue: 7 }}
      - {{ name: r, requests: 1, per: 1s, on_limit: reject }}
"
        );
        let cfg = crate::load_str(&src, "t.yaml").unwrap().config;
        assert_eq!(cfg.consumers[0].priority, 10);
        assert_eq!(cfg.consumers[1].priority, 0);
        let api = &cfg.apis[0];
        let c = api.concurrency.unwrap();
        assert_eq!((c.max, c.per_consumer), (Some(10), Some(2)));
        assert_eq!(c.on_limit.queue().map(|q| q.max_queue), Some(100));
        let l = &api.limits[0];
        let shares = l.shares.as_ref().unwrap();
        assert_eq!(shares["acme"], Percentage(25.0));
        assert_eq!(shares["others"], Percentage(50.0));
        assert_eq!(
            (l.borrow, l.default_share),
            (Some(Borrow::Off), Some(DefaultShare::Deny))
        );
        assert_eq!(
            l.on_limit,
            OnLimit::Queue(QueueSpec {
                queue: Duration::from_secs(5),
                max_queue: 7
            })
        );
        assert_eq!(api.limits[1].on_limit, OnLimit::Reject);
    }

    #[test]
    fn problems_have_key_paths() {
        let src = format!(
            "{CONSUMERS}apis:
  - name: a
    hosts: [a.example.com]
    concurrency: {{ max: 2, per_consumer: 3, on_limit: {{ queue: 0s, max_queue: 0 }} }}
    limits:
      - {{ name: g, requests: 10, per: 1s, algorithm: gcra, shares: {{ acme: 10% }} }}
      - {{ name: c, requests: 10, per: 1m, by: consumer, shares: {{ acme: 10% }} }}
      - {{ name: t, requests: 10, per: 1m, shares: {{ acme: 60%, nobody: 30% }}, default_share: 20% }}
      - {{ name: b, requests: 10, per: 1m, borrow: true, default_share: deny }}
      - {{ name: e, requests: 10, per: 1m, shares: {{}}, on_limit: {{ queue: 0ms }} }}
  - name: b
    hosts: [b.example.com]
    concurrency: {{}}
"
        );
        let got = problems(&src);
        // Errors come back in source order.
        let p: Vec<&str> = got.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            p,
            [
                "apis[0].concurrency.per_consumer",
                "apis[0].concurrency.on_limit.queue",
                "apis[0].concurrency.on_limit.max_queue",
                "apis[0].limits[0].shares",
                "apis[0].limits[1].shares",
                "apis[0].limits[2].shares",
                "apis[0].limits[2].shares.nobody",
                "apis[0].limits[3].borrow",
                "apis[0].limits[3].default_share",
                "apis[0].limits[4].shares",
                "apis[0].limits[4].on_limit.queue",
                "apis[1].concurrency",
            ],
            "{got:#?}"
        );
        assert!(got[3].1.contains("gcra"), "{}", got[3].1);
        assert!(got[5].1.contains("110%"), "{}", got[5].1);
        // `anonymous` may hold a share while unknown callers are let through.
        let ok = format!(
            "{CONSUMERS}apis:
  - name: a
    hosts: [a.example.com]
    limits: [{{ name: l, requests: 10, per: 1m, shares: {{ anonymous: 10%, acme: 90% }} }}]
"
        );
        assert!(problems(&ok).is_empty(), "{:?}", problems(&ok));
        let bad = format!(
            "unknown_consumer: {{ action: deny }}
{ok}"
        );
        assert_eq!(problems(&bad).len(), 1);
    }

    #[test]
    fn borrow_takes_a_bool_or_unallocated() {
        let load = |v: &str| {
            crate::load_str(
                &format!(
                    "{CONSUMERS}apis:
  - name: a
    hosts: [a.example.com]
    limits: [{{ name: l, requests: 10, per: 1m, shares: {{ acme: 25% }}, borrow: {v} }}]
"
                ),
                "t.yaml",
            )
            .map(|l| l.config.apis[0].limits[0].borrow)
        };
        assert_eq!(load("true").unwrap(), Some(Borrow::Idle));
        assert_eq!(load("false").unwrap(), Some(Borrow::Off));
        assert_eq!(load("unallocated").unwrap(), Some(Borrow::Unallocated));
        assert_eq!(load("\"unallocated\"").unwrap(), Some(Borrow::Unallocated));
        let err = format!("{:#}", load("sometimes").unwrap_err());
        assert!(err.contains("true, false or `unallocated`"), "{err}");
        assert!(err.contains("borrow"), "{err}");
        // Round trip through serde keeps the spelling.
        let as_yaml = |b: Borrow| serde_json::to_string(&b).unwrap();
        assert_eq!(
            (
                as_yaml(Borrow::Idle),
                as_yaml(Borrow::Off),
                as_yaml(Borrow::Unallocated)
            ),
            ("true".into(), "false".into(), "\"unallocated\"".into())
        );
    }

    #[test]
    fn time_zones_are_offsets_or_iana_names() {
        use TimeZoneSetting::{Iana, Offset};
        assert_eq!(parse_time_zone("+02:00"), Ok(Offset(120)));
        assert_eq!(parse_time_zone("-0530"), Ok(Offset(-330)));
        assert_eq!(parse_time_zone("UTC"), Ok(Offset(0)));
        assert_eq!(
            parse_time_zone("Europe/Berlin"),
            Ok(Iana("Europe/Berlin".into()))
        );
        assert_eq!(
            parse_time_zone(" America/New_York "),
            Ok(Iana("America/New_York".into()))
        );
        let e = parse_time_zone("Europe/Berln").unwrap_err();
        assert!(e.contains("unknown time zone \"Europe/Berln\""), "{e}");
        assert!(
            parse_time_zone("+25:00")
                .unwrap_err()
                .contains("UTC offset")
        );
    }

    #[test]
    fn millionths_are_exact_for_usual_shares() {
        assert_eq!(share_millionths(Percentage(25.0)), 250_000);
        assert_eq!(share_millionths(Percentage(29.0)), 290_000);
        assert_eq!(share_millionths(Percentage(12.5)), 125_000);
        assert_eq!(share_millionths(Percentage(100.0)), 1_000_000);
    }
}
