//! Tollgate telemetry: the Prometheus metrics registry, the JSON access log, query redaction for
//! logged paths, and process log (tracing) set-up.
//!
//! Nothing here is global except the tracing subscriber: one [`Metrics`] is created at start-up
//! and passed around as `Arc<Metrics>`; one [`AccessLog`] is opened and cloned into handlers.
//! Everything is re-exported at the crate root; the module paths work too.

// Tests may unwrap freely; the workspace lints keep it out of library code.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod redact;

pub use access_log::{AccessLog, AccessRecord, DEFAULT_CAPACITY as ACCESS_LOG_DEFAULT_CAPACITY};
pub use logging::{LOG_ENV, init_tracing};
pub use metrics::{
    ActiveGuard, CONTENT_TYPE as METRICS_CONTENT_TYPE, DURATION_BUCKETS_SECONDS, GaugeHandle,
    Metrics, RequestObservation, TargetHandles,
};
pub use redact::{REDACTED, redact_query};
