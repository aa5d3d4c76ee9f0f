//! Metrics of the managed gateway's control-plane sync agent: whether the control plane
//! is reachable, which bundle version is applied, how long a publish took to reach this
//! gateway, and bundles refused (by a fixed set of reasons, never free text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    reason: &'static str,
}

/// The reasons a bundle is refused; each series exists from the start so alerts work
/// before the first rejection.
pub const BUNDLE_REJECT_REASONS: [&str; 7] = [
    "bad_signature",
    "unknown_key",
    "expired",
    "rollback",
    "invalid_config",
    "wrong_group",
    "malformed",
];

pub(super) struct ControlMetrics {
    connected: Gauge,
    applied_version: Gauge,
    rejected: Family<RejectLabels, Counter>,
    publish_to_apply: Histogram,
}

impl ControlMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = ControlMetrics {
            connected: Gauge::default(),
            applied_version: Gauge::default(),
            rejected: Family::default(),
            // 10 ms .. ~80 s: a long-poll wake-up is sub-second, a gateway that was offline
            // catches up after minutes (those land in +Inf and still count).
            publish_to_apply: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 14),
            ),
        };
        for reason in BUNDLE_REJECT_REASONS {
            m.rejected.get_or_create(&RejectLabels { reason }).inc_by(0);
        }
        registry.register(
            "tollgate_control_plane_connected",
            "1 while the last request to the control plane succeeded, else 0 (managed gateways)",
            m.connected.clone(),
        );
        registry.register(
            "tollgate_config_applied_version",
            "Version of the control-plane bundle currently applied (managed gateways; 0 = none)",
            m.applied_version.clone(),
        );
        registry.register(
            "tollgate_config_bundle_rejected",
            "Control-plane config bundles refused, by reason; the previous configuration keeps serving",
            m.rejected.clone(),
        );
        registry.register_with_unit(
            "tollgate_config_publish_to_apply",
            "Time from a bundle's issued_at (publish) until this gateway applied it",
            Unit::Seconds,
            m.publish_to_apply.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// Records whether the control plane answered the last request.
    pub fn control_plane_connected(&self, connected: bool) {
        self.control.connected.set(i64::from(connected));
    }

    /// Records that the bundle `version` is serving, `lag_s` seconds after it was published
    /// (`None` when it came from the on-disk backup: that is not a publish-to-apply time).
    pub fn config_bundle_applied(&self, version: u64, lag_s: Option<f64>) {
        self.control
            .applied_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        if let Some(lag) = lag_s {
            self.control.publish_to_apply.observe(lag.max(0.0));
        }
    }

    /// Counts one refused bundle; `reason` is one of [`BUNDLE_REJECT_REASONS`].
    pub fn config_bundle_rejected(&self, reason: &'static str) {
        self.control
            .rejected
            .get_or_create(&RejectLabels { reason })
            .inc();
    }
}
