//! Tollgate configuration: the types a user writes, strict parsing that reports
//! every error with file, line, column and key path, cross-field validation,
//! the embedded default configuration and the JSON Schema.
//!
//! Entry points: [`load_file`] / [`load_str`] (parse + validate, all errors at
//! once), [`embedded_default`], [`json_schema`]. Other crates that find
//! problems later (e.g. invalid path patterns) report them at the right place
//! with [`SourceMap::locate`].

// Tests may unwrap and panic: a failed assertion is the point of a test.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod auth;
pub mod cache;
pub mod cors;
mod defaults;
pub mod dlp;
mod error;
pub mod load;
mod model;
mod outbound;
pub mod resilience;
pub mod schema;
pub mod secret;
mod source_map;
pub mod telemetry;
pub mod traffic;
pub mod units;
pub mod upstreams;
pub mod validate;

pub use auth::{Auth, JwtAlgorithm, JwtIdentity, JwtIssuer};
pub use cache::{ApiCache, CacheGlobal, CacheKeyPart};
pub use defaults::{DEFAULT_CONFIG, DEFAULT_ORIGIN, EXAMPLE_CONFIG, embedded_default};
pub use dlp::{BodyLimits, Dlp};
pub use error::{ConfigError, ConfigErrors};
pub use load::{Loaded, load_file, load_str};
pub use model::*;
pub use outbound::*;
pub use resilience::{Breaker, Condition, ProviderBackoff, Retry};
pub use schema::json_schema;
pub use secret::{Secret, SecretError, SecretRef, SecretTemplate};
pub use source_map::SourceMap;
pub use telemetry::{OtlpProtocol, Telemetry, Tracing};
pub use units::{ByteSize, Duration};
pub use upstreams::UpstreamGroup;
pub use validate::{ANONYMOUS_CONSUMER, GuardEntry, parse_guard_entry, validate};
