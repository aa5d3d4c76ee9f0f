//! Configuration types for the shared HTTP response cache (`apis[].cache`, and
//! the process-wide `cache` bound). Shape checks serde cannot express (the key
//! must name `method` and `url`, sizes above zero) are in [`problems`] and
//! [`global_problems`]; the caching rules themselves are in the proxy's
//! `cache.rs` and docs/stages/cache.md.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Duration};

/// One part of the cache key of an API's responses (`apis[].cache.key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheKeyPart {
    /// The request method (`GET`, `HEAD`). Required.
    Method,
    /// The upstream URL: scheme, host, port, path and query. Required.
    Url,
    /// The consumer's name. Also added, whatever the key says, unless
    /// `shared_across_consumers` is true.
    Consumer,
    /// Values of these request headers (case-insensitive names; absent and empty differ).
    Headers(Vec<String>),
}

fn default_key() -> Vec<CacheKeyPart> {
    vec![
        CacheKeyPart::Method,
        CacheKeyPart::Url,
        CacheKeyPart::Consumer,
    ]
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
    /// `consumer`, `headers: [..]`. Default `[method, url, consumer]`.
    #[serde(default = "default_key")]
    pub key: Vec<CacheKeyPart>,
    /// Serve one consumer's cached responses to other consumers (default false: the consumer
    /// is always part of the key). `private` responses are never stored either way.
    #[serde(default)]
    pub shared_across_consumers: bool,
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
    for need in [CacheKeyPart::Method, CacheKeyPart::Url] {
        if !c.key.contains(&need) {
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
    for (i, p) in c.key.iter().enumerate() {
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
        assert_eq!(c.key, default_key());
        assert_eq!(l.config.cache.max_bytes, ByteSize(256 * 1024 * 1024));

        let src = api("{ ttl: 60s, key: [method, url, { headers: [x-tenant] }] }");
        let c = crate::load_str(&src, "t.yaml").unwrap().config.apis[0]
            .cache
            .clone()
            .unwrap();
        assert_eq!(c.ttl, Some(Duration::from_secs(60)));
        assert_eq!(c.key[2], CacheKeyPart::Headers(vec!["x-tenant".into()]));
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
