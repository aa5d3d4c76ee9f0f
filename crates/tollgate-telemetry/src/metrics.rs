//! The proxy's Prometheus metrics: one registry, created once and shared as `Arc<Metrics>`.
//!
//! Names follow `tollgate_<area>_<thing>_<unit>`. Label values are API and consumer names from
//! config plus a few fixed words, so cardinality is bounded by the config. Per-request updates
//! go through a lock-free handle cache (see `handle_cache`) and end in relaxed atomic adds.

mod cache;
mod control;
mod credentials;
mod discovery;
mod dlp;
mod handle_cache;
mod histogram;
mod jwks;
mod limit_store;
mod outcomes;
mod queueing;
mod trace_export;
mod upstreams;
mod usage;

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use handle_cache::HandleCache;
pub use histogram::DURATION_BUCKETS_SECONDS;
use histogram::DurationHistogram;
pub use queueing::GaugeHandle;
pub use upstreams::TargetHandles;

/// Content type of [`Metrics::encode`]'s output, for the `/metrics` response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label value used when a request matched no API.
const NO_API: &str = "none";
/// Label value used when the consumer is not known (empty name).
const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: String,
    api: String,
    consumer: String,
    status_class: &'static str,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindApiLabels {
    kind: String,
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    api: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    api: String,
    limit: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiReasonLabels {
    api: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiToLabels {
    api: String,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Handles for one request label combination; clones share the registry's atomics.
struct RequestHandles {
    requests: Counter,
    duration: DurationHistogram,
    upstream: DurationHistogram,
    bytes_in: Counter,
    bytes_out: Counter,
}

/// Handles for one API's tunnels.
struct TunnelHandles {
    active: Gauge,
    to_upstream: Counter,
    from_upstream: Counter,
}

/// What the proxy reports about one finished request or tunnel.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestObservation<'a> {
    /// `forward`, `connect` or `route`.
    pub kind: &'a str,
    /// API name from config, or `""` when nothing matched (exported as `none`).
    pub api: &'a str,
    /// Consumer name from config, `anonymous`, or `""` (exported as `unknown`).
    pub consumer: &'a str,
    /// HTTP status; exported as its class, `1xx`..`5xx` (anything else is `other`).
    pub status: u16,
    /// `allow`, `deny` or `report`.
    pub decision: &'a str,
    pub total: Duration,
    pub upstream: Option<Duration>,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
}

/// Keeps a gauge raised while alive; dropping it lowers the gauge again.
#[must_use = "the gauge is decremented as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ActiveGuard {
    gauge: Gauge,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The registry and every metric family. Create one at start-up and share it as `Arc<Metrics>`;
/// all methods take `&self` and are safe to call from any thread.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<KindApiLabels, DurationHistogram>,
    upstream_duration: Family<ApiLabels, DurationHistogram>,
    request_bytes: Family<BytesLabels, Counter>,
    request_cache: HandleCache<5, RequestHandles>,
    connections_active: Gauge,
    tunnels_active: Family<ApiLabels, Gauge>,
    websocket_upgrades: Family<ApiLabels, Counter>,
    tunnel_bytes: Family<BytesLabels, Counter>,
    tunnel_cache: HandleCache<1, TunnelHandles>,
    guard_denials: Family<ReasonLabels, Counter>,
    tls_handshake_failures: Family<ReasonLabels, Counter>,
    dns_errors: Family<KindLabels, Counter>,
    config_version: Gauge,
    config_reloads: Family<ResultLabels, Counter>,
    config_last_reload_success: Gauge,
    access_log_dropped: Counter,
    limit_decisions: Family<LimitLabels, Counter>,
    limit_cache: HandleCache<3, Counter>,
    limit_response_cost: Family<LimitLabels, Counter>,
    resilience: ResilienceFamilies,
    limit_store: limit_store::LimitStoreMetrics,
    queueing: queueing::QueueMetrics,
    credentials: credentials::CredentialMetrics,
    dlp: dlp::DlpMetrics,
    cache: cache::CacheMetrics,
    discovery: discovery::DiscoveryMetrics,
    control: control::ControlMetrics,
    usage: usage::UsageMetrics,
    outcomes: outcomes::OutcomeMetrics,
    trace_export: trace_export::TraceMetrics,
    upstreams: upstreams::UpstreamMetrics,
    jwks: jwks::JwksMetrics,
}

/// Retries, circuit breaker and provider back-off (rare events: no handle cache needed).
struct ResilienceFamilies {
    retries: Family<ApiReasonLabels, Counter>,
    budget_exhausted: Family<ApiLabels, Counter>,
    breaker_state: Family<ApiLabels, Gauge>,
    breaker_transitions: Family<ApiToLabels, Counter>,
    provider_backoff: Family<ApiLabels, Counter>,
}

impl ResilienceFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = ResilienceFamilies {
            retries: Family::default(),
            budget_exhausted: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            provider_backoff: Family::default(),
        };
        registry.register(
            "tollgate_upstream_retries",
            "Upstream attempts repeated, by API and reason (a status code, connect, timeout or reset)",
            f.retries.clone(),
        );
        registry.register(
            "tollgate_retry_budget_exhausted",
            "Retries skipped because the API's retry budget was spent",
            f.budget_exhausted.clone(),
        );
        registry.register(
            "tollgate_breaker_state",
            "Circuit breaker state by API: 0 closed, 1 half-open, 2 open",
            f.breaker_state.clone(),
        );
        registry.register(
            "tollgate_breaker_transitions",
            "Circuit breaker state changes, by API and new state (closed, half_open, open)",
            f.breaker_transitions.clone(),
        );
        registry.register(
            "tollgate_provider_backoff",
            "Back-off periods started because the provider signalled its quota was exhausted",
            f.provider_backoff.clone(),
        );
        f
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Lets [`crate::AccessLog::open`] accept `&Metrics`, `Arc<Metrics>` or `&Arc<Metrics>`.
impl AsRef<Metrics> for Metrics {
    fn as_ref(&self) -> &Metrics {
        self
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "tollgate_requests",
            "Requests and tunnels handled, by kind, API, consumer, status class and decision",
            requests.clone(),
        );
        let request_duration = Family::<KindApiLabels, DurationHistogram>::default();
        registry.register_with_unit(
            "tollgate_request_duration",
            "Time from request start until the response (or tunnel) finished",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration = Family::<ApiLabels, DurationHistogram>::default();
        registry.register_with_unit(
            "tollgate_upstream_duration",
            "Time from sending the request upstream until its response headers arrived",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let request_bytes = Family::<BytesLabels, Counter>::default();
        registry.register_with_unit(
            "tollgate_request",
            "Body bytes: direction=in from the client, direction=out to the client",
            Unit::Bytes,
            request_bytes.clone(),
        );
        let connections_active = Gauge::default();
        registry.register(
            "tollgate_proxy_connections_active",
            "Client connections currently open",
            connections_active.clone(),
        );
        let tunnels_active = Family::<ApiLabels, Gauge>::default();
        registry.register(
            "tollgate_proxy_tunnels_active",
            "CONNECT tunnels currently open, by API",
            tunnels_active.clone(),
        );
        let websocket_upgrades = Family::<ApiLabels, Counter>::default();
        registry.register(
            "tollgate_websocket_upgrades",
            "WebSocket connections upgraded through the gateway, by API (their bytes and open count are in the tunnel metrics)",
            websocket_upgrades.clone(),
        );
        let tunnel_bytes = Family::<BytesLabels, Counter>::default();
        registry.register_with_unit(
            "tollgate_tunnel",
            "Tunnel payload bytes: direction=in client to upstream, direction=out upstream to client",
            Unit::Bytes,
            tunnel_bytes.clone(),
        );
        let guard_denials = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tollgate_guard_denials",
            "Destinations refused by the network guard, by reason",
            guard_denials.clone(),
        );
        let tls_handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tollgate_tls_handshake_failures",
            "Failed TLS handshakes on listen.proxy_tls, by reason",
            tls_handshake_failures.clone(),
        );
        let dns_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "tollgate_dns_errors",
            "DNS resolution failures, by kind",
            dns_errors.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "tollgate_config_version",
            "Version of the configuration currently serving",
            config_version.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tollgate_config_reloads",
            "Configuration loads, by result (ok or error)",
            config_reloads.clone(),
        );
        // Both series exist from the start so `rate()` and alerts work before the first failure.
        for result in ["ok", "error"] {
            config_reloads
                .get_or_create(&ResultLabels { result })
                .inc_by(0);
        }
        let config_last_reload_success = Gauge::default();
        registry.register(
            "tollgate_config_last_reload_success",
            "1 if the most recent configuration load succeeded, else 0",
            config_last_reload_success.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "tollgate_access_log_dropped",
            "Access-log lines dropped because the writer could not keep up",
            access_log_dropped.clone(),
        );
        let limit_decisions = Family::<LimitLabels, Counter>::default();
        registry.register(
            "tollgate_limit_decisions",
            "Rate-limit decisions, by API, limit and result (admitted or limited)",
            limit_decisions.clone(),
        );
        let limit_response_cost = Family::<LimitLabels, Counter>::default();
        registry.register(
            "tollgate_limit_response_cost_units",
            "Units of response-based limit costs (cost.response_bytes / response_json) charged when responses ended, by API, limit and result (charged, or over_limit: beyond what was left)",
            limit_response_cost.clone(),
        );
        let resilience = ResilienceFamilies::register(&mut registry);
        let limit_store = limit_store::LimitStoreMetrics::register(&mut registry);
        let queueing = queueing::QueueMetrics::register(&mut registry);
        let credentials = credentials::CredentialMetrics::register(&mut registry);
        let dlp = dlp::DlpMetrics::register(&mut registry);
        let cache = cache::CacheMetrics::register(&mut registry);
        let discovery = discovery::DiscoveryMetrics::register(&mut registry);
        let control = control::ControlMetrics::register(&mut registry);
        let usage = usage::UsageMetrics::register(&mut registry);
        let outcomes = outcomes::OutcomeMetrics::register(&mut registry);
        let trace_export = trace_export::TraceMetrics::register(&mut registry);
        let upstreams = upstreams::UpstreamMetrics::register(&mut registry);
        let jwks = jwks::JwksMetrics::register(&mut registry);
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "tollgate_build_info",
            "Always 1; the version label names the running build",
            build_info,
        );

        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            request_bytes,
            request_cache: HandleCache::new(),
            connections_active,
            tunnels_active,
            websocket_upgrades,
            tunnel_bytes,
            tunnel_cache: HandleCache::new(),
            guard_denials,
            tls_handshake_failures,
            dns_errors,
            config_version,
            config_reloads,
            config_last_reload_success,
            access_log_dropped,
            limit_decisions,
            limit_cache: HandleCache::new(),
            limit_response_cost,
            resilience,
            limit_store,
            queueing,
            credentials,
            dlp,
            cache,
            discovery,
            control,
            usage,
            outcomes,
            trace_export,
            upstreams,
            jwks,
        }
    }

    /// OpenMetrics text exposition of every family, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail; an error could only come from a label encoder and
        // would leave a truncated but still useful page.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed; exposition is incomplete");
        }
        out
    }

    pub fn observe_request(&self, o: &RequestObservation<'_>) {
        let class = status_class(o.status);
        self.request_cache.with(
            [o.kind, o.api, o.consumer, class, o.decision],
            || self.request_handles(o, class),
            |h| {
                h.requests.inc();
                h.duration.observe(o.total);
                if let Some(upstream) = o.upstream {
                    h.upstream.observe(upstream);
                }
                if o.bytes_in > 0 {
                    h.bytes_in.inc_by(o.bytes_in);
                }
                if o.bytes_out > 0 {
                    h.bytes_out.inc_by(o.bytes_out);
                }
            },
        );
    }

    #[cold]
    fn request_handles(&self, o: &RequestObservation<'_>, class: &'static str) -> RequestHandles {
        let api = label_value(api_label(o.api));
        RequestHandles {
            requests: self.requests.get_or_create_owned(&RequestLabels {
                kind: label_value(o.kind),
                api: api.clone(),
                consumer: label_value(consumer_label(o.consumer)),
                status_class: class,
                decision: label_value(o.decision),
            }),
            duration: self.request_duration.get_or_create_owned(&KindApiLabels {
                kind: label_value(o.kind),
                api: api.clone(),
            }),
            upstream: self
                .upstream_duration
                .get_or_create_owned(&ApiLabels { api: api.clone() }),
            bytes_in: self.request_bytes.get_or_create_owned(&BytesLabels {
                api: api.clone(),
                direction: "in",
            }),
            bytes_out: self.request_bytes.get_or_create_owned(&BytesLabels {
                api,
                direction: "out",
            }),
        }
    }

    pub fn connection_opened(&self) -> ActiveGuard {
        self.connections_active.inc();
        ActiveGuard {
            gauge: self.connections_active.clone(),
        }
    }

    pub fn tunnel_opened(&self, api: &str) -> ActiveGuard {
        let gauge =
            self.tunnel_cache
                .with([api], || self.tunnel_handles(api), |h| h.active.clone());
        gauge.inc();
        ActiveGuard { gauge }
    }

    /// Counts one WebSocket connection upgraded through the gateway (upgrade.rs).
    pub fn websocket_upgraded(&self, api: &str) {
        self.websocket_upgrades
            .get_or_create(&ApiLabels {
                api: label_value(api_label(api)),
            })
            .inc();
    }

    /// Adds tunnel payload bytes; may be called repeatedly while a tunnel is open.
    pub fn tunnel_bytes(&self, api: &str, to_upstream: u64, from_upstream: u64) {
        self.tunnel_cache.with(
            [api],
            || self.tunnel_handles(api),
            |h| {
                if to_upstream > 0 {
                    h.to_upstream.inc_by(to_upstream);
                }
                if from_upstream > 0 {
                    h.from_upstream.inc_by(from_upstream);
                }
            },
        );
    }

    #[cold]
    fn tunnel_handles(&self, api: &str) -> TunnelHandles {
        let api = label_value(api_label(api));
        TunnelHandles {
            active: self
                .tunnels_active
                .get_or_create_owned(&ApiLabels { api: api.clone() }),
            to_upstream: self.tunnel_bytes.get_or_create_owned(&BytesLabels {
                api: api.clone(),
                direction: "in",
            }),
            from_upstream: self.tunnel_bytes.get_or_create_owned(&BytesLabels {
                api,
                direction: "out",
            }),
        }
    }

    /// Counts one limit's decision for one request: `limited` when this limit refused it, else
    /// `admitted`. `api` and `limit` are names from config.
    pub fn limit_decision(&self, api: &str, limit: &str, limited: bool) {
        let result = if limited { "limited" } else { "admitted" };
        self.limit_cache.with(
            [api, limit, result],
            || {
                self.limit_decisions.get_or_create_owned(&LimitLabels {
                    api: label_value(api_label(api)),
                    limit: label_value(limit),
                    result,
                })
            },
            |c| {
                c.inc();
            },
        );
    }

    /// Counts one retry of an upstream attempt; `reason` is a fixed word or a status code.
    pub fn upstream_retry(&self, api: &str, reason: &'static str) {
        self.resilience
            .retries
            .get_or_create(&ApiReasonLabels {
                api: label_value(api_label(api)),
                reason,
            })
            .inc();
    }

    /// Counts a retry that the API's retry budget did not allow.
    pub fn retry_budget_exhausted(&self, api: &str) {
        self.resilience
            .budget_exhausted
            .get_or_create(&ApiLabels {
                api: label_value(api_label(api)),
            })
            .inc();
    }

    /// Sets an API's breaker state gauge: 0 closed, 1 half-open, 2 open.
    pub fn breaker_state(&self, api: &str, state: i64) {
        self.resilience
            .breaker_state
            .get_or_create(&ApiLabels {
                api: label_value(api_label(api)),
            })
            .set(state);
    }

    /// Records a breaker transition: `state` is 0 closed, 1 half-open, 2 open.
    pub fn breaker_transition(&self, api: &str, state: i64) {
        self.breaker_state(api, state);
        let api = label_value(api_label(api));
        let to = match state {
            0 => "closed",
            1 => "half_open",
            _ => "open",
        };
        self.resilience
            .breaker_transitions
            .get_or_create(&ApiToLabels { api, to })
            .inc();
    }

    /// Counts a provider back-off period started (or extended) by an upstream response.
    /// A response-based cost charged to a limit: `charged` units, and `over` units beyond what
    /// the limit had left (not recorded in the counter).
    pub fn limit_response_cost(&self, api: &str, limit: &str, charged: u64, over: u64) {
        for (result, n) in [("charged", charged), ("over_limit", over)] {
            if n > 0 {
                self.limit_response_cost
                    .get_or_create_owned(&LimitLabels {
                        api: label_value(api_label(api)),
                        limit: label_value(limit),
                        result,
                    })
                    .inc_by(n);
            }
        }
    }

    pub fn provider_backoff(&self, api: &str) {
        self.resilience
            .provider_backoff
            .get_or_create(&ApiLabels {
                api: label_value(api_label(api)),
            })
            .inc();
    }

    pub fn guard_denied(&self, reason: &'static str) {
        self.guard_denials
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A failed handshake on the TLS listener; `reason` is one of a fixed set
    /// (`no_certificate`, `revoked`, `bad_certificate`, `timeout`, `other`).
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn dns_error(&self, kind: &'static str) {
        self.dns_errors.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn config_applied(&self, version: u64) {
        self.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.config_reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        self.config_last_reload_success.set(1);
    }

    pub fn config_reload_failed(&self) {
        self.config_reloads
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
        self.config_last_reload_success.set(0);
    }

    /// Handle for the access log's dropped-lines counter.
    pub(crate) fn access_log_dropped_counter(&self) -> Counter {
        self.access_log_dropped.clone()
    }
}

fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

fn api_label(api: &str) -> &str {
    if api.is_empty() { NO_API } else { api }
}

fn consumer_label(consumer: &str) -> &str {
    if consumer.is_empty() {
        UNKNOWN
    } else {
        consumer
    }
}

/// An owned label value in exposition form. prometheus-client 0.24 writes label values verbatim,
/// so a `"`, `\` or newline in a config name would corrupt the whole scrape; escape them here,
/// once per new label combination.
fn label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
