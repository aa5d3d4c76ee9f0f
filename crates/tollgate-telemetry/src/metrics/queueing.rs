//! Metrics of waiting for capacity: the wait queues of limits with `on_limit: { queue }` and
//! the concurrency limits (in flight, queued). Labels are API and limit names from config.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::histogram::DurationHistogram;
use super::{api_label, label_value};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueueLabels {
    api: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueuedLabels {
    api: String,
    limit: String,
    /// `admitted`, `timeout`, `full` or `cancelled`.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ApiOnly {
    api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ApiResult {
    api: String,
    result: &'static str,
}

pub(super) struct QueueMetrics {
    depth: Family<QueueLabels, Gauge>,
    queued: Family<QueuedLabels, Counter>,
    wait: Family<ApiOnly, DurationHistogram>,
    in_flight: Family<ApiOnly, Gauge>,
    concurrency_depth: Family<ApiOnly, Gauge>,
    concurrency_queued: Family<ApiResult, Counter>,
}

/// A gauge that goes up while something is held (a waiter, an in-flight request); the caller
/// pairs each `inc` with a `dec`.
#[derive(Clone, Debug)]
pub struct GaugeHandle(Gauge);

impl GaugeHandle {
    pub fn inc(&self) {
        self.0.inc();
    }
    pub fn dec(&self) {
        self.0.dec();
    }
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

impl QueueMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = QueueMetrics {
            depth: Family::default(),
            queued: Family::default(),
            wait: Family::default(),
            in_flight: Family::default(),
            concurrency_depth: Family::default(),
            concurrency_queued: Family::default(),
        };
        registry.register(
            "tollgate_limit_queue_depth",
            "Requests waiting in a limit's queue (on_limit: queue)",
            m.depth.clone(),
        );
        registry.register(
            "tollgate_limit_queued",
            "Requests that waited in a limit's queue, by how the wait ended (admitted, timeout, full, cancelled)",
            m.queued.clone(),
        );
        registry.register_with_unit(
            "tollgate_limit_queue_wait",
            "Time requests spent waiting in a limit or concurrency queue before going ahead or giving up",
            Unit::Seconds,
            m.wait.clone(),
        );
        registry.register(
            "tollgate_concurrency_in_flight",
            "Requests in flight to an API with a concurrency limit",
            m.in_flight.clone(),
        );
        registry.register(
            "tollgate_concurrency_queue_depth",
            "Requests waiting for a concurrency slot of an API",
            m.concurrency_depth.clone(),
        );
        registry.register(
            "tollgate_concurrency_queued",
            "Requests that waited for a concurrency slot, by how the wait ended (admitted, timeout, full, cancelled)",
            m.concurrency_queued.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// The depth gauge of a limit's wait queue.
    pub fn limit_queue_depth(&self, api: &str, limit: &str) -> GaugeHandle {
        GaugeHandle(self.queueing.depth.get_or_create_owned(&QueueLabels {
            api: label_value(api_label(api)),
            limit: label_value(limit),
        }))
    }

    /// Counts a request that waited in (or was turned away from) a limit's queue.
    pub fn limit_queued(&self, api: &str, limit: &str, result: &'static str) {
        self.queueing
            .queued
            .get_or_create(&QueuedLabels {
                api: label_value(api_label(api)),
                limit: label_value(limit),
                result,
            })
            .inc();
    }

    /// Records how long a request waited in a limit or concurrency queue.
    pub fn limit_queue_wait(&self, api: &str, d: Duration) {
        self.queueing
            .wait
            .get_or_create(&ApiOnly {
                api: label_value(api_label(api)),
            })
            .observe(d);
    }

    /// The in-flight gauge of an API's concurrency limit.
    pub fn concurrency_in_flight(&self, api: &str) -> GaugeHandle {
        GaugeHandle(self.queueing.in_flight.get_or_create_owned(&ApiOnly {
            api: label_value(api_label(api)),
        }))
    }

    /// The depth gauge of an API's concurrency queue.
    pub fn concurrency_queue_depth(&self, api: &str) -> GaugeHandle {
        GaugeHandle(
            self.queueing
                .concurrency_depth
                .get_or_create_owned(&ApiOnly {
                    api: label_value(api_label(api)),
                }),
        )
    }

    /// Counts a request that waited for (or was turned away from) a concurrency slot.
    pub fn concurrency_queued(&self, api: &str, result: &'static str) {
        self.queueing
            .concurrency_queued
            .get_or_create(&ApiResult {
                api: label_value(api_label(api)),
                result,
            })
            .inc();
    }
}
