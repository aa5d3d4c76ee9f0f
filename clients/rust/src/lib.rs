//! Fail-safe reqwest client for Tollgate.
//!
//! Selected hosts go through the gateway (proxy or route mode); when the
//! gateway itself is unavailable the call goes directly to the provider — but
//! only when the request provably did not reach the provider (see `core` for
//! the decision table, shared with the Python client). Policy answers (403,
//! 429) are returned as is; a non-idempotent request that may have been
//! forwarded is never re-sent. Every fallback is counted (`stats()`) and
//! logged with `tracing` (`tollgate.event = "fallback"`).

mod client;
mod config;
pub mod core;

pub use client::{Error, FailSafeClient, RequestBuilder};
pub use config::{Config, ConfigBuilder, ConfigError, Mode};
pub use core::{BreakerState, Stats, global_stats};
