//! Metrics of the OpenTelemetry span exporter (`telemetry.tracing`, crate `tollgate-trace`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DropLabels {
    /// `queue_full` (the export queue was full) or `export_failed` (the collector refused or
    /// could not be reached).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ExportLabels {
    /// `ok` or `error`.
    result: &'static str,
}

pub(super) struct TraceMetrics {
    dropped: Family<DropLabels, Counter>,
    exports: Family<ExportLabels, Counter>,
    exported: Counter,
}

impl TraceMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = TraceMetrics {
            dropped: Family::default(),
            exports: Family::default(),
            exported: Counter::default(),
        };
        registry.register(
            "tollgate_trace_spans_dropped",
            "Spans not exported, by reason (queue_full: the export queue was full; export_failed: the collector failed or was unreachable)",
            m.dropped.clone(),
        );
        registry.register(
            "tollgate_trace_exports",
            "OTLP export calls, by result (ok or error)",
            m.exports.clone(),
        );
        registry.register(
            "tollgate_trace_spans_exported",
            "Spans accepted by the OTLP collector",
            m.exported.clone(),
        );
        for reason in ["queue_full", "export_failed"] {
            m.dropped.get_or_create(&DropLabels { reason }).inc_by(0);
        }
        for result in ["ok", "error"] {
            m.exports.get_or_create(&ExportLabels { result }).inc_by(0);
        }
        m
    }
}

impl super::Metrics {
    /// Counts `n` spans dropped; `reason` is `queue_full` or `export_failed`.
    pub fn trace_spans_dropped(&self, reason: &'static str, n: u64) {
        self.trace_export
            .dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(n);
    }

    /// Counts one export call of `spans` spans; failed ones also count the spans as dropped.
    pub fn trace_export_call(&self, ok: bool, spans: u64) {
        let result = if ok { "ok" } else { "error" };
        self.trace_export
            .exports
            .get_or_create(&ExportLabels { result })
            .inc();
        if ok {
            self.trace_export.exported.inc_by(spans);
        } else {
            self.trace_spans_dropped("export_failed", spans);
        }
    }
}
