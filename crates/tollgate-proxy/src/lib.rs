//! Tollgate's data plane: the proxy listener (forward proxy, CONNECT tunnels
//! and routes on one port), upstream connections with DNS pinning and the
//! network guard, TLS, the one renderer for gateway errors, graceful
//! shutdown, plus the admin API and configuration reload.
//!
//! `main` binds the listeners, builds a [`Gateway`] with [`Gateway::new`],
//! spawns [`serve_proxy`] and the admin server, and calls
//! `gateway.shutdown.trigger()` on SIGTERM/SIGINT; `serve_proxy` returns once
//! everything has drained.

pub mod admin;
pub mod admin_limits;
pub mod admin_ui;
pub mod admission;
pub mod backoff;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod cache;
mod cache_range;
mod cache_store;
pub mod concurrency;
pub mod connect;
pub mod cors;
pub mod cost;
pub mod discovery;
pub mod dlp_body;
pub mod dns;
pub mod framing;
pub mod guard;
pub mod handler;
pub mod health;
pub mod hop;
pub mod intercept;
pub mod jwks;
pub mod limit_headers;
pub mod limit_store;
pub mod mint;
pub mod oauth;
pub mod observe;
pub mod outbound;
pub mod persist;
pub mod queue;
pub mod reload;
pub mod request_id;
pub mod resilience;
pub mod respond;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod sni;
pub mod spans;
pub mod state;
pub mod tls;
pub mod tls_listener;
pub mod upgrade;
pub mod upstream;
pub mod usage;
pub mod waiting;

pub use server::serve_proxy;
pub use shutdown::Shutdown;
pub use state::{Active, BuildError, Gateway};
pub use tls_listener::serve_proxy_tls;
