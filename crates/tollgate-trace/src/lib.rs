//! OpenTelemetry tracing for Tollgate (`telemetry.tracing`, docs/tracing.md).
//!
//! A [`Tracer`] decides per request whether the trace is sampled ([`Tracer::request`]); a
//! sampled request gets a [`RequestSpan`] (kind SERVER, parent = the caller's `traceparent`),
//! whose [`ChildCtx`] records queue-wait and cache-lookup spans and one CLIENT span per
//! upstream attempt — whose ID is what the upstream receives in `traceparent`.
//!
//! Finished spans go into a bounded queue with `try_send` (never waiting; a full queue drops
//! the span and counts it in `tollgate_trace_spans_dropped_total{reason="queue_full"}`); one
//! background task batches them and exports over OTLP gRPC or HTTP/protobuf (export.rs).
//! When tracing is off, the proxy holds no tracer and does no tracing work at all.

// Tests may unwrap freely; the workspace lints keep it out of library code.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod context;
mod export;
pub mod otlp;
pub mod span;

use std::sync::Arc;

use http::HeaderMap;
use tokio::sync::{mpsc, oneshot};
use tollgate_config::Tracing;
use tollgate_telemetry::Metrics;

pub use context::{Parent, Sampler, SpanId, TRACEPARENT, TRACESTATE, TraceId};
pub use export::BuildError;
pub use span::{
    AttemptSpan, ChildCtx, RequestEnd, RequestSpan, SpanData, Status, Value, now_nanos,
};

/// The running tracer: sampler, export queue, and the config it was built from.
pub struct Tracer {
    tx: mpsc::Sender<SpanData>,
    flush_tx: mpsc::Sender<oneshot::Sender<()>>,
    sampler: Sampler,
    metrics: Arc<Metrics>,
    config: Tracing,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("endpoint", &self.config.endpoint)
            .field("protocol", &self.config.protocol)
            .finish_non_exhaustive()
    }
}

/// A request's sampling decision.
pub enum Decision {
    /// Recorded: the request span.
    Sampled(Box<RequestSpan>),
    /// Not recorded. With no caller context, the `traceparent` to send upstream (flag 00, so
    /// the next service does not record a trace whose root Tollgate dropped); with one, `None`
    /// (the caller's header travels on).
    NotSampled(Option<http::HeaderValue>),
}

impl Tracer {
    /// Starts the exporter task (needs a tokio runtime) and returns the tracer.
    pub fn start(cfg: &Tracing, metrics: Arc<Metrics>) -> Result<Arc<Tracer>, BuildError> {
        let client = export::Client::new(cfg)?;
        let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
        let (flush_tx, flush_rx) = mpsc::channel(1);
        let resource = otlp::Resource {
            attributes: vec![
                ("service.name", Value::from(cfg.service_name.as_str())),
                ("service.version", Value::Static(env!("CARGO_PKG_VERSION"))),
                ("telemetry.sdk.name", Value::Static("tollgate")),
                ("telemetry.sdk.language", Value::Static("rust")),
            ],
        };
        tokio::spawn(export::run(
            rx,
            flush_rx,
            client,
            resource,
            cfg.clone(),
            metrics.clone(),
        ));
        tracing::info!(
            trace.endpoint = %cfg.endpoint,
            trace.protocol = ?cfg.protocol,
            trace.sample_ratio = cfg.sample_ratio,
            "OpenTelemetry span export on"
        );
        Ok(Arc::new(Tracer {
            tx,
            flush_tx,
            sampler: Sampler::new(cfg.sample_ratio, cfg.parent_based),
            metrics,
            config: cfg.clone(),
        }))
    }

    /// Whether this tracer was built from `cfg` (a reload with the same settings keeps it).
    pub fn same_config(&self, cfg: &Tracing) -> bool {
        self.config == *cfg
    }

    /// Samples a request from its headers (the caller's `traceparent` / `tracestate`).
    pub fn request(self: &Arc<Self>, headers: &HeaderMap) -> Decision {
        let parent = context::extract(headers);
        let trace_id = parent
            .as_ref()
            .map_or_else(context::new_trace_id, |p| p.trace_id);
        if self.sampler.sample(&trace_id, parent.as_ref()) {
            Decision::Sampled(Box::new(RequestSpan::new(self.clone(), trace_id, parent)))
        } else if parent.is_some() {
            Decision::NotSampled(None)
        } else {
            Decision::NotSampled(Some(context::traceparent(
                &trace_id,
                &context::new_span_id(),
                false,
            )))
        }
    }

    /// Sends every span queued so far, waiting at most `within` (at shutdown, after requests
    /// have drained). True when the exporter finished in time.
    pub async fn flush(&self, within: std::time::Duration) -> bool {
        let (done, wait) = oneshot::channel();
        let asked = async { self.flush_tx.send(done).await.is_ok() && wait.await.is_ok() };
        tokio::time::timeout(within, asked).await.unwrap_or(false)
    }

    /// Queues a finished span, or drops and counts it when the queue is full.
    pub fn submit(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.metrics.trace_spans_dropped("queue_full", 1);
        }
    }
}

#[cfg(test)]
mod tests;
