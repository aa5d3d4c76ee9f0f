//! Why requests did not simply pass through: every `tollgate-error` code Tollgate answered with, and
//! requests that ended abnormally (`response_incomplete`, refused intercepted tunnels). The reason is
//! a fixed word from the error catalogue, so the label stays bounded; this is the metric to alert on
//! a particular refusal (for example `rate_limited` or `circuit_open`) without reading access logs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{api_label, label_value};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabels {
    api: String,
    /// `deny` (refused), `report` (a report-mode policy would have refused; the request went
    /// ahead) or `allow` (allowed, then ended abnormally or failed upstream).
    decision: &'static str,
    reason: &'static str,
}

pub(super) struct OutcomeMetrics {
    reasons: Family<OutcomeLabels, Counter>,
}

impl OutcomeMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = OutcomeMetrics {
            reasons: Family::default(),
        };
        registry.register(
            "tollgate_request_reasons",
            "Requests refused by Tollgate, let through by a report-mode policy, or ended abnormally, by API, decision and reason (the tollgate-error code, or response_incomplete)",
            m.reasons.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// Counts one request of `api` (`""` when none matched) that carried `reason`. Called only
    /// for refusals, reports and abnormal ends, never for plain successes, so no handle cache.
    pub fn request_reason(&self, api: &str, decision: &'static str, reason: &'static str) {
        self.outcomes
            .reasons
            .get_or_create(&OutcomeLabels {
                api: label_value(api_label(api)),
                decision,
                reason,
            })
            .inc();
    }
}
