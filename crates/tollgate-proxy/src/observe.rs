//! The log stage: one access-log line and one metrics observation per request
//! or tunnel, denials and errors included. A [`Completion`] carries what is
//! known about the request and is finished when the response body ends (or the
//! tunnel closes), so byte counts are final.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tollgate_policy::{Scheme, TrafficKind};
use tollgate_telemetry::{AccessRecord, RequestObservation, redact_query};

use crate::body::BodyStats;
use crate::dns::{DnsError, ResolveError};
use crate::state::{Active, Gateway};
use crate::upstream::ConnectError;

/// Bytes received from the client.
pub enum BytesIn {
    Fixed(u64),
    Streamed(Arc<BodyStats>),
}

/// Everything the log line needs, gathered while the request runs.
pub struct Completion {
    pub gateway: Arc<Gateway>,
    pub active: Arc<Active>,
    pub start: Instant,
    pub time: SystemTime,
    pub request_id: String,
    pub kind: TrafficKind,
    pub peer: SocketAddr,
    pub consumer: Option<Arc<str>>,
    pub api: Option<Arc<str>>,
    pub method: http::Method,
    pub scheme: Scheme,
    /// The destination as the client named it (URI authority, CONNECT target, or Host for routes).
    pub host: String,
    /// Path and query as the client sent them; redacted when logged.
    pub path: String,
    pub status: u16,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub bytes_in: BytesIn,
    pub upstream_duration: Option<Duration>,
    pub upstream_addr: Option<SocketAddr>,
    /// Upstream attempts made by the retry loop (a tunnel that connected counts as one).
    pub attempts: u32,
    /// Name of the credential key injected upstream (never its value).
    pub credential: Option<Arc<str>>,
    /// The request's concurrency slot, held until this completion is finished or dropped
    /// (response body end, tunnel close, client gone).
    pub concurrency: Option<crate::waiting::Slot>,
    /// Data-loss protection findings, `detector:count,…` (dlp_body.rs); never the data.
    pub dlp: Option<String>,
    /// The provider's rate-limit headers on the upstream response, for discovery.
    pub provider_limits: Option<crate::discovery::ProviderLimits>,
    /// Response cache result (`hit`, `miss`, `stale`, `revalidated`, `bypass`) for an API
    /// with `cache`; see cache.rs.
    pub cache: Option<&'static str>,
    /// The request's OpenTelemetry span when tracing is on and the request is sampled
    /// (spans.rs); ended with the log line.
    pub trace: Option<Box<tollgate_trace::RequestSpan>>,
}

impl Completion {
    /// Writes the access-log line and the metrics. `complete` is false when the
    /// response body was cut short (client went away, upstream failed mid-body).
    pub fn finish(mut self, bytes_out: u64, complete: bool) {
        let bytes_in = match &self.bytes_in {
            BytesIn::Fixed(n) => *n,
            BytesIn::Streamed(s) => s.bytes(),
        };
        let total = self.start.elapsed();
        let reason = match (self.reason, complete) {
            (Some(r), _) => Some(r),
            (None, false) => Some("response_incomplete"),
            (None, true) => None,
        };
        crate::spans::finish(&mut self, reason);
        let gw = &self.gateway;
        if let Some(r) = reason {
            gw.metrics
                .request_reason(self.api.as_deref().unwrap_or(""), self.decision, r);
        }
        gw.metrics.observe_request(&RequestObservation {
            kind: self.kind.as_str(),
            api: self.api.as_deref().unwrap_or(""),
            consumer: self.consumer.as_deref().unwrap_or(""),
            status: self.status,
            decision: self.decision,
            total,
            upstream: self.upstream_duration,
            bytes_in,
            bytes_out,
        });
        if let Some(usage) = gw.usage.load().as_ref() {
            usage.record(&crate::usage::Sample {
                time: self.time,
                api: self.api.as_ref(),
                consumer: self.consumer.as_ref(),
                method: self.method.as_str(),
                path: &self.path,
                tunnel: self.kind == TrafficKind::Connect,
                status: self.status,
                decision: self.decision,
                reason,
                complete,
                duration: total,
                bytes_in,
                bytes_out,
                upstream: self.upstream_addr.is_some(),
                dlp: self.dlp.as_deref(),
            });
        }
        gw.discovery.record(
            &self.active.policy.config().discovery,
            &crate::discovery::Seen {
                kind: self.kind,
                host: &self.host,
                method: self.method.as_str(),
                path: &self.path,
                api: self.api.as_ref(),
                consumer: self.consumer.as_ref(),
                status: self.status,
                denied: self.decision == "deny",
                duration: total,
                limits: self.provider_limits.as_ref(),
            },
        );
        if !gw.access_log.is_enabled() {
            return;
        }
        let path = redact_query(&self.path, &self.active.redact_query_params);
        gw.access_log.log(&AccessRecord {
            time: self.time,
            request_id: &self.request_id,
            kind: self.kind.as_str(),
            peer: self.peer.ip(),
            consumer: self.consumer.as_deref(),
            api: self.api.as_deref(),
            method: self.method.as_str(),
            scheme: self.scheme.as_str(),
            host: &self.host,
            path: &path,
            status: self.status,
            decision: self.decision,
            reason,
            bytes_in,
            bytes_out,
            duration: total,
            upstream_duration: self.upstream_duration,
            upstream_addr: self.upstream_addr,
            attempts: self.attempts.max(u32::from(self.upstream_addr.is_some())),
            credential: self.credential.as_deref(),
            dlp: self.dlp.as_deref(),
            cache: self.cache,
        });
    }
}

/// Counts guard denials and DNS failures met while connecting upstream.
pub fn count_connect_error(gw: &Gateway, err: &ConnectError) {
    match err {
        ConnectError::Resolve(ResolveError::Blocked(d)) => gw.metrics.guard_denied(d.as_str()),
        ConnectError::Resolve(ResolveError::Dns(e)) => gw.metrics.dns_error(dns_label(e)),
        _ => {}
    }
}

fn dns_label(e: &DnsError) -> &'static str {
    match e {
        DnsError::NotFound(_) => "not_found",
        DnsError::Timeout(_) => "timeout",
        DnsError::Failed(_) => "failed",
        DnsError::Config(_) => "config",
    }
}
