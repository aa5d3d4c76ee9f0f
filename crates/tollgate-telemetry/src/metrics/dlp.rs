//! Metrics of data-loss protection and body size limits. Labels are API and
//! detector names from config and fixed action/direction words, never data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{api_label, label_value};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FindingLabels {
    api: String,
    detector: String,
    /// `block`, `redact` or `report` (the action taken, report mode applied).
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct LimitLabels {
    api: String,
    /// `request` or `response`.
    direction: &'static str,
}

pub(super) struct DlpMetrics {
    findings: Family<FindingLabels, Counter>,
    body_limit: Family<LimitLabels, Counter>,
}

impl DlpMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = DlpMetrics {
            findings: Family::default(),
            body_limit: Family::default(),
        };
        registry.register(
            "tollgate_dlp_findings",
            "Data-loss protection findings (matches), by API, detector and action taken",
            m.findings.clone(),
        );
        registry.register(
            "tollgate_body_limit_exceeded",
            "Bodies refused or cut for exceeding body_limits, by API and direction",
            m.body_limit.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// Adds `count` findings of `detector` (a name from config or `oversize`) with `action`.
    /// Findings are rare next to requests, so no handle cache.
    pub fn dlp_findings(&self, api: &str, detector: &str, action: &'static str, count: u64) {
        self.dlp
            .findings
            .get_or_create(&FindingLabels {
                api: label_value(api_label(api)),
                detector: label_value(detector),
                action,
            })
            .inc_by(count);
    }

    /// Counts one body over `body_limits` (`direction`: `request` or `response`).
    pub fn body_limit_exceeded(&self, api: &str, direction: &'static str) {
        self.dlp
            .body_limit
            .get_or_create(&LimitLabels {
                api: label_value(api_label(api)),
                direction,
            })
            .inc();
    }
}
