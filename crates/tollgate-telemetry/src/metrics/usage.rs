//! Metrics of the managed gateway's usage pipeline (tollgate-control `agent/usage.rs`): the
//! on-disk buffer of usage batches waiting for the control plane, batches evicted from it past
//! its size bound, and uploads.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub(super) struct UsageMetrics {
    buffer_bytes: Gauge,
    buffer_batches: Gauge,
    evicted: Counter,
    uploaded: Counter,
    upload_failures: Counter,
    rejected: Counter,
}

impl UsageMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = UsageMetrics {
            buffer_bytes: Gauge::default(),
            buffer_batches: Gauge::default(),
            evicted: Counter::default(),
            uploaded: Counter::default(),
            upload_failures: Counter::default(),
            rejected: Counter::default(),
        };
        registry.register_with_unit(
            "tollgate_usage_buffer",
            "Size of the usage batches buffered on disk, waiting for the control plane",
            Unit::Bytes,
            m.buffer_bytes.clone(),
        );
        registry.register(
            "tollgate_usage_buffer_batches",
            "Usage batches buffered on disk, waiting for the control plane",
            m.buffer_batches.clone(),
        );
        registry.register(
            "tollgate_usage_buffer_evicted",
            "Usage batches deleted unsent because the buffer exceeded its size bound (oldest first)",
            m.evicted.clone(),
        );
        registry.register(
            "tollgate_usage_batches_uploaded",
            "Usage batches acknowledged by the control plane",
            m.uploaded.clone(),
        );
        registry.register(
            "tollgate_usage_upload_failures",
            "Usage uploads that failed (control plane unreachable or erroring); the batch stays buffered",
            m.upload_failures.clone(),
        );
        registry.register(
            "tollgate_usage_batches_rejected",
            "Usage batches the control plane refused as malformed (dropped, logged)",
            m.rejected.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// Sets the buffer gauges.
    pub fn usage_buffer(&self, bytes: u64, batches: u64) {
        self.usage
            .buffer_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.usage
            .buffer_batches
            .set(i64::try_from(batches).unwrap_or(i64::MAX));
    }

    /// Counts batches evicted past the buffer bound.
    pub fn usage_buffer_evicted(&self, batches: u64) {
        self.usage.evicted.inc_by(batches);
    }

    pub fn usage_uploaded(&self) {
        self.usage.uploaded.inc();
    }

    pub fn usage_upload_failed(&self) {
        self.usage.upload_failures.inc();
    }

    pub fn usage_rejected(&self) {
        self.usage.rejected.inc();
    }
}
