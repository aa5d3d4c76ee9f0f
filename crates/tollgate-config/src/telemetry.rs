//! `telemetry:` — OpenTelemetry trace export over OTLP (docs/tracing.md).
//!
//! Off unless `telemetry.tracing` is present. Validation (endpoint shape, ratio range, header
//! names, queue sizes) is in [`problems`]; the exporter itself lives in `tollgate-trace`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;
use crate::units::Duration;

/// Telemetry exported to other systems (metrics are always on the admin listener).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// OpenTelemetry traces over OTLP. Absent: no spans are made (zero cost).
    #[serde(default)]
    pub tracing: Option<Tracing>,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// gRPC `TraceService/Export` over HTTP/2 (collector port 4317).
    #[default]
    Grpc,
    /// HTTP/protobuf `POST /v1/traces` (collector port 4318).
    Http,
}

/// Where and how spans are exported, and which requests are sampled.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Collector URL, `http://` or `https://`. For `protocol: http` a URL without a path gets
    /// `/v1/traces` appended; for `grpc` only scheme, host and port are used.
    pub endpoint: String,
    /// `grpc` (default) or `http` (HTTP/protobuf).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Share of new traces (requests without a sampled caller `traceparent`) that are recorded,
    /// 0.0–1.0. Default 1.0.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// Follow the caller's sampling decision (the `traceparent` sampled flag) when there is one.
    /// Default true.
    #[serde(default = "default_true")]
    pub parent_based: bool,
    /// `service.name` of the exported resource. Default `tollgate`.
    #[serde(default = "default_service")]
    pub service_name: String,
    /// Extra request headers for the collector (e.g. an API key); values may be secret
    /// references and are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// Upper bound for one export call, connect included. Default 10s.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Spans waiting for export; further spans are dropped and counted
    /// (`tollgate_trace_spans_dropped_total`). Default 2048.
    #[serde(default = "default_queue")]
    pub queue_size: usize,
    /// Most spans in one export call. Default 512.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Longest a span waits before its batch is sent. Default 1s.
    #[serde(default = "default_delay")]
    pub batch_delay: Duration,
}

fn default_ratio() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_service() -> String {
    "tollgate".to_owned()
}
fn default_timeout() -> Duration {
    Duration::secs_10()
}
fn default_queue() -> usize {
    2048
}
fn default_batch() -> usize {
    512
}
fn default_delay() -> Duration {
    Duration::from_secs(1)
}

/// Problems in `telemetry`, as (key path below `telemetry.`, message).
pub fn problems(t: &Telemetry) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(tr) = &t.tracing else {
        return out;
    };
    let mut p = |k: &str, m: String| out.push((format!("tracing.{k}"), m));
    if let Err(m) = endpoint_problem(&tr.endpoint) {
        p("endpoint", m);
    }
    if !(0.0..=1.0).contains(&tr.sample_ratio) {
        p(
            "sample_ratio",
            format!("must be between 0.0 and 1.0, got {}", tr.sample_ratio),
        );
    }
    if tr.service_name.trim().is_empty() {
        p("service_name", "must not be empty".to_owned());
    }
    for name in tr.headers.keys() {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
        if !ok {
            p(
                &format!("headers.{name}"),
                "not a valid HTTP header name".to_owned(),
            );
        } else if name.starts_with(':')
            || ["content-type", "content-length", "te", "host"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
        {
            p(
                &format!("headers.{name}"),
                "is set by the exporter and cannot be overridden".to_owned(),
            );
        }
    }
    if tr.timeout.get().is_zero() {
        p("timeout", "must be above 0".to_owned());
    }
    if tr.queue_size == 0 {
        p("queue_size", "must be above 0".to_owned());
    }
    if tr.batch_size == 0 {
        p("batch_size", "must be above 0".to_owned());
    } else if tr.batch_size > tr.queue_size && tr.queue_size > 0 {
        p(
            "batch_size",
            format!("must not exceed queue_size ({})", tr.queue_size),
        );
    }
    if tr.batch_delay.get().is_zero() {
        p("batch_delay", "must be above 0".to_owned());
    }
    out
}

/// `http(s)://host[:port][/path]`, no query, fragment or user info.
fn endpoint_problem(e: &str) -> Result<(), String> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| "must start with http:// or https://".to_owned())?;
    if e.contains('?') || e.contains('#') {
        return Err("must not have a query or fragment".to_owned());
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err("must not carry user info (put credentials in headers)".to_owned());
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the host".to_owned())?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".to_owned());
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |n| n == 0)
    {
        return Err(format!("invalid port {p:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracing(endpoint: &str) -> Telemetry {
        Telemetry {
            tracing: Some(Tracing {
                endpoint: endpoint.to_owned(),
                protocol: OtlpProtocol::Grpc,
                sample_ratio: 1.0,
                parent_based: true,
                service_name: "tollgate".into(),
                headers: BTreeMap::new(),
                timeout: default_timeout(),
                queue_size: 10,
                batch_size: 5,
                batch_delay: default_delay(),
            }),
        }
    }

    #[test]
    fn endpoints() {
        assert!(problems(&tracing("http://127.0.0.1:4317")).is_empty());
        assert!(problems(&tracing("https://otel.example.com/v1/traces")).is_empty());
        assert!(problems(&tracing("http://[::1]:4318")).is_empty());
        for bad in [
            "127.0.0.1:4317",
            "http://",
            "http://h:0",
            "http://h:x",
            "http://u:p@h",
            "http://h/?a",
        ] {
            let p = problems(&tracing(bad));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert_eq!(p[0].0, "tracing.endpoint");
        }
    }

    #[test]
    fn ranges_and_headers() {
        let mut t = tracing("http://h:1");
        if let Some(tr) = &mut t.tracing {
            tr.sample_ratio = 1.5;
            tr.batch_size = 11;
            tr.headers
                .insert("bad header".into(), SecretRef::Literal("v".into()));
            tr.headers
                .insert("content-type".into(), SecretRef::Literal("v".into()));
        }
        let keys: Vec<String> = problems(&t).into_iter().map(|p| p.0).collect();
        assert_eq!(
            keys,
            [
                "tracing.sample_ratio",
                "tracing.headers.bad header",
                "tracing.headers.content-type",
                "tracing.batch_size"
            ]
        );
    }
}
