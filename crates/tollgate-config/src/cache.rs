//! Configuration types for the shared HTTP response cache (`apis[].cache`, and
//! the process-wide `cache` bound). Shape checks serde cannot express (the key
//! must name `method` and `url`, sizes above zero) are in [`problems`] and
//! [`global_problems`]; the caching rules themselves are in the proxy's
//! `cache.rs` and docs/stages/cache.md.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{ByteSize, Duration};

/// One part of the cache key of an API's responses (`apis[].cache.key`): `method`, `url`,
/// `consumer`, `credential`, `header:<name>` or `{ headers: [..] }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKeyPart {
    /// The request method (`GET`, `HEAD`). Required.
    Method,
    /// The upstream URL: scheme, host, port, path and query. Required.
    Url,
    /// The consumer's name. Also added, whatever the key says, unless
    /// `shared_across_consumers` is true.
    Consumer,
    /// The name of the credential key Tollgate injects for the request (never its value):
    /// with several `credentials.keys`, responses fetched with one key are only served to
    /// requests that would use the same key.
    Credential,
    /// Values of these request headers (case-insensitive names; absent and empty differ).
    /// `header:X-Tenant` is the one-header form.
    Headers(Vec<String>),
}

impl Serialize for CacheKeyPart {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self {
            Self::Method => s.serialize_str("method"),
            Self::Url => s.serialize_str("url"),
            Self::Consumer => s.serialize_str("consumer"),
            Self::Credential => s.serialize_str("credential"),
            Self::Headers(h) if h.len() == 1 => s.serialize_str(&format!("header:{}", h[0])),
            Self::Headers(h) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("headers", h)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for CacheKeyPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Headers {
            headers: Vec<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Headers(Headers),
        }
        match Raw::deserialize(d)? {
            Raw::Headers(h) => Ok(Self::Headers(h.headers)),
            Raw::Name(n) => match n.trim() {
                "method" => Ok(Self::Method),
                "url" => Ok(Self::Url),
                "consumer" => Ok(Self::Consumer),
                "credential" => Ok(Self::Credential),
                other => match other.strip_prefix("header:") {
                    Some(h) => Ok(Self::Headers(vec![h.trim().to_owned()])),
                    None => Err(serde::de::Error::custom(format!(
                        "unknown cache key part {other:?}: expected method, url, consumer, credential, header:<name> or {{ headers: [..] }}"
                    ))),
                },
            },
        }
    }
}

impl JsonSchema for CacheKeyPart {
    fn schema_name() -> Cow<'static, str> {
        "CacheKeyPart".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`method`, `url`, `consumer`, `credential`, `header:<name>` or `{ headers: [..] }`.",
            "oneOf": [
                { "enum": ["method", "url", "consumer", "credential"] },
                { "type": "string", "pattern": "^header:.+$" },
                {
                    "type": "object",
                    "properties": { "headers": { "type": "array", "items": { "type": "string" } } },
                    "required": ["headers"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// The key when `key` is absent: `[method, url]` (the consumer is added unless
/// `shared_across_consumers`), plus `credential` when the API injects one of several keys (so
/// a response fetched with one account's key is never served for another's, even when shared
/// across consumers).
pub fn default_key(several_keys: bool) -> Vec<CacheKeyPart> {
    let mut k = vec![CacheKeyPart::Method, CacheKeyPart::Url];
    if several_keys {
        k.push(CacheKeyPart::Credential);
    }
    k
}

fn yes() -> bool {
    true
}

fn default_max_entry() -> ByteSize {
    ByteSize(1024 * 1024)
}

/// The response cache of one API (RFC 9111 shared cache for `GET` and `HEAD`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiCache {
    /// Turn the cache on for this API (default true once the `cache` map is present).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Freshness for responses that carry no `Cache-Control` and no `Expires` (opt-in).
    /// Absent: such responses are only cached when heuristic freshness applies.
    #[serde(default)]
    pub ttl: Option<Duration>,
    /// Largest response body stored (default `1MiB`); larger bodies are streamed and not stored.
    #[serde(default = "default_max_entry")]
    pub max_entry: ByteSize,
    /// What identifies a stored response, besides `Vary`: `method`, `url` (both required),
    /// `consumer`, `credential`, `header:<name>`, `{ headers: [..] }`. Absent: `[method, url]`,
    /// plus `credential` when the API has several credential keys. The consumer is always
    /// part of the key unless `shared_across_consumers`.
    #[serde(default)]
    pub key: Option<Vec<CacheKeyPart>>,
    /// Serve one consumer's cached responses to other consumers (default false: the consumer
    /// is always part of the key). `private` responses are never stored either way.
    #[serde(default)]
    pub shared_across_consumers: bool,
}

impl ApiCache {
    /// The effective key parts: `key`, or the default for an API with (`several_keys`) or
    /// without several credential keys (see [`default_key`]).
    pub fn key_parts(&self, several_keys: bool) -> &[CacheKeyPart] {
        const ONE: &[CacheKeyPart] = &[CacheKeyPart::Method, CacheKeyPart::Url];
        const SEVERAL: &[CacheKeyPart] = &[
            CacheKeyPart::Method,
            CacheKeyPart::Url,
            CacheKeyPart::Credential,
        ];
        match &self.key {
            Some(k) => k,
            None if several_keys => SEVERAL,
            None => ONE,
        }
    }
}

fn default_max_bytes() -> ByteSize {
    ByteSize(256 * 1024 * 1024)
}

/// Process-wide response cache settings (the memory bound shared by every API's cache).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheGlobal {
    /// Bytes of stored responses (bodies and headers) kept in memory; least recently and
    /// frequently used entries are evicted beyond it. Default `256MiB`. Read at start.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
}

impl Default for CacheGlobal {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
        }
    }
}

/// Problems of one API's `cache`, as `(key relative to the cache, message)`.
pub fn problems(c: &ApiCache) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if c.max_entry.get() == 0 {
        out.push(("max_entry".into(), "must be above 0".into()));
    }
    if c.ttl.is_some_and(|t| t.0.is_zero()) {
        out.push(("ttl".into(), "must be above 0 (omit it for none)".into()));
    }
    let key = c.key.as_deref().unwrap_or(&[]);
    for need in [CacheKeyPart::Method, CacheKeyPart::Url] {
        if c.key.is_some() && !key.contains(&need) {
            out.push((
                "key".into(),
                format!(
                    "must contain {}",
                    if need == CacheKeyPart::Method {
                        "method"
                    } else {
                        "url"
                    }
                ),
            ));
        }
    }
    for (i, p) in key.iter().enumerate() {
        if let CacheKeyPart::Headers(h) = p {
            for (j, name) in h.iter().enumerate() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    out.push((
                        format!("key[{i}].headers[{j}]"),
                        "not a valid header name".into(),
                    ));
                }
            }
        }
    }
    out
}

/// Problems of the global `cache`, as `(key relative to it, message)`.
pub fn global_problems(c: &CacheGlobal) -> Vec<(String, String)> {
    if c.max_bytes.get() == 0 {
        return vec![("max_bytes".into(), "must be above 0".into())];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn api(cache: &str) -> String {
        format!("apis:\n  - name: a\n    hosts: [a.example.com]\n    cache: {cache}\n")
    }

    #[test]
    fn defaults_and_key_parts_parse() {
        let l = crate::load_str(&api("{}"), "t.yaml").unwrap();
        let c = l.config.apis[0].cache.clone().unwrap();
        assert!(c.enabled && !c.shared_across_consumers && c.ttl.is_none());
        assert_eq!(c.max_entry, ByteSize(1024 * 1024));
        assert_eq!(c.key, None);
        assert_eq!(c.key_parts(false), default_key(false));
        assert_eq!(c.key_parts(true), default_key(true));
        assert_eq!(l.config.cache.max_bytes, ByteSize(256 * 1024 * 1024));

        let src = api(
            "{ ttl: 60s, key: [method, url, { headers: [x-tenant] }, credential, \"header:X-Org\"] }",
        );
        let c = crate::load_str(&src, "t.yaml").unwrap().config.apis[0]
            .cache
            .clone()
            .unwrap();
        assert_eq!(c.ttl, Some(Duration::from_secs(60)));
        let key = c.key.unwrap();
        assert_eq!(key[2], CacheKeyPart::Headers(vec!["x-tenant".into()]));
        assert_eq!(key[3], CacheKeyPart::Credential);
        assert_eq!(key[4], CacheKeyPart::Headers(vec!["X-Org".into()]));
        let bad = api("{ key: [method, url, tenant] }");
        assert!(crate::load_str(&bad, "t.yaml").is_err());
    }

    #[test]
    fn bad_values_are_reported_with_key_paths() {
        let src = format!(
            "cache: {{ max_bytes: 0B }}\n{}",
            api("{ max_entry: 0B, ttl: 0s, key: [url, { headers: [\"bad header\"] }] }")
        );
        let e = match crate::load_str(&src, "t.yaml") {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0,
        };
        let mut paths: Vec<_> = e.iter().map(|e| e.path.clone()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "apis[0].cache.key",
                "apis[0].cache.key[1].headers[0]",
                "apis[0].cache.max_entry",
                "apis[0].cache.ttl",
                "cache.max_bytes",
            ]
        );
        let unknown = api("{ tll: 5s }");
        assert!(
            crate::load_str(&unknown, "t.yaml").is_err(),
            "unknown keys are refused"
        );
    }
}
