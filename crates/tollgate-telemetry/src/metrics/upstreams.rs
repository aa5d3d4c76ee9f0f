//! Metrics of upstream groups (`apis[].upstream_group`): per-target health, requests and
//! ejections. Labels are the API name and the target's `host:port` from config (never a URL
//! with credentials: targets cannot carry any), so cardinality is bounded by the config.
//! The proxy fetches one [`TargetHandles`] per target when a group starts, so requests only
//! do relaxed atomic adds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    api: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetResultLabels {
    api: String,
    target: String,
    result: &'static str,
}

pub(super) struct UpstreamMetrics {
    healthy: Family<TargetLabels, Gauge>,
    requests: Family<TargetResultLabels, Counter>,
    ejections: Family<TargetLabels, Counter>,
}

impl UpstreamMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = UpstreamMetrics {
            healthy: Family::default(),
            requests: Family::default(),
            ejections: Family::default(),
        };
        registry.register(
            "tollgate_upstream_target_healthy",
            "Whether an upstream group target receives traffic (1) or not (0: failed health checks or ejected)",
            m.healthy.clone(),
        );
        registry.register(
            "tollgate_upstream_target_requests",
            "Attempts sent to an upstream group target, by result (success, failure: connect error, reset, timeout or 5xx)",
            m.requests.clone(),
        );
        registry.register(
            "tollgate_upstream_target_ejections",
            "Times a target was ejected by passive health checking (consecutive failures)",
            m.ejections.clone(),
        );
        m
    }
}

/// The metric handles of one group target.
#[derive(Clone, Debug)]
pub struct TargetHandles {
    pub healthy: Gauge,
    pub success: Counter,
    pub failure: Counter,
    pub ejections: Counter,
}

impl super::Metrics {
    /// The handles for target `target` (`host:port`) of API `api`'s upstream group.
    pub fn upstream_target(&self, api: &str, target: &str) -> TargetHandles {
        let u = &self.upstreams;
        let labels = TargetLabels {
            api: api.to_owned(),
            target: target.to_owned(),
        };
        let result = |result| TargetResultLabels {
            api: api.to_owned(),
            target: target.to_owned(),
            result,
        };
        // One statement each: a family's read guard lives to the end of its statement, and a
        // second `get_or_create` on the same family in that statement would deadlock.
        let healthy = u.healthy.get_or_create(&labels).clone();
        let success = u.requests.get_or_create(&result("success")).clone();
        let failure = u.requests.get_or_create(&result("failure")).clone();
        let ejections = u.ejections.get_or_create(&labels).clone();
        TargetHandles {
            healthy,
            success,
            failure,
            ejections,
        }
    }
}
