//! Metrics of API discovery: how many endpoints are recorded, and how many
//! observations fell into an overflow bucket because a bound was reached. No
//! labels: hosts and paths come from traffic, not config, so they never become
//! label values.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub(super) struct DiscoveryMetrics {
    endpoints: Gauge,
    overflow: Counter,
}

impl DiscoveryMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = DiscoveryMetrics {
            endpoints: Gauge::default(),
            overflow: Counter::default(),
        };
        registry.register(
            "tollgate_discovery_endpoints",
            "Endpoints (host, method, path pattern) recorded by API discovery",
            m.endpoints.clone(),
        );
        registry.register(
            "tollgate_discovery_overflow",
            "Requests counted in a discovery overflow bucket (discovery.max_hosts or max_endpoints_per_host reached)",
            m.overflow.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// Sets the number of recorded discovery endpoints.
    pub fn discovery_endpoints(&self, n: usize) {
        self.discovery
            .endpoints
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one request that discovery could only record in an overflow bucket.
    pub fn discovery_overflow(&self) {
        self.discovery.overflow.inc();
    }
}
