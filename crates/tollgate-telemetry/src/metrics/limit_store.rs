//! Metrics of the shared limit store (Redis): degraded mode, errors and latency.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::histogram::DurationHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ErrorLabels {
    /// `unavailable` (timeout, connection) or `protocol` (unexpected reply).
    kind: &'static str,
}

pub(super) struct LimitStoreMetrics {
    degraded: Gauge,
    errors: Family<ErrorLabels, Counter>,
    latency: DurationHistogram,
}

impl LimitStoreMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = LimitStoreMetrics {
            degraded: Gauge::default(),
            errors: Family::default(),
            latency: DurationHistogram::default(),
        };
        registry.register(
            "tollgate_limit_store_degraded",
            "1 while the shared limit store (Redis) is unreachable and global limits fall back to their on_store_failure, else 0",
            m.degraded.clone(),
        );
        registry.register(
            "tollgate_limit_store_errors",
            "Failed calls to the shared limit store, by kind (unavailable or protocol)",
            m.errors.clone(),
        );
        for kind in ["unavailable", "protocol"] {
            m.errors.get_or_create(&ErrorLabels { kind }).inc_by(0);
        }
        registry.register_with_unit(
            "tollgate_limit_store_latency",
            "Duration of successful calls to the shared limit store",
            Unit::Seconds,
            m.latency.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// Sets the degraded-mode gauge of the shared limit store.
    pub fn limit_store_degraded(&self, degraded: bool) {
        self.limit_store.degraded.set(i64::from(degraded));
    }

    /// Counts a failed call to the shared limit store; `kind` is `unavailable` or `protocol`.
    pub fn limit_store_error(&self, kind: &'static str) {
        self.limit_store
            .errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
    }

    /// Records the duration of a successful call to the shared limit store.
    pub fn limit_store_latency(&self, d: Duration) {
        self.limit_store.latency.observe(d);
    }
}
