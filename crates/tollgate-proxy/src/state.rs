//! The gateway's shared state. [`Gateway`] lives for the whole process;
//! [`Active`] is everything derived from one configuration (compiled policy,
//! network guard, resolver, pooled upstream client) and is swapped atomically
//! on reload. A request loads its `Arc<Active>` once and keeps it to the end,
//! so in-flight requests finish on the configuration they started with.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderName;
use tollgate_config::Secret;
use tollgate_policy::{LocalStore, Policy, Switches};
use tollgate_telemetry::{AccessLog, Metrics};

use crate::dns::Resolver;
use crate::guard::NetworkGuard;
use crate::shutdown::Shutdown;
use crate::tls::{self, TlsConfigError};
use crate::upstream::Upstream;

/// Why the runtime pieces of a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("network_guard: {0}")]
    Guard(String),
    #[error("dns: {0}")]
    Dns(String),
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    #[error("admin.token: {0}")]
    AdminToken(tollgate_config::SecretError),
}

impl BuildError {
    /// The configuration key the failure belongs to, for locating it in the file.
    pub fn key_path(&self) -> &'static str {
        match self {
            Self::Guard(_) => "network_guard",
            Self::Dns(_) => "dns",
            Self::Tls(_) => "upstream.ca_file",
            Self::AdminToken(_) => "admin.token",
        }
    }
}

/// When a listener is bound to `0.0.0.0` or `::`, it is reachable on every
/// address of this host; the guard must know them all to refuse connecting
/// back to itself. Empty when no listener is a wildcard (or interfaces cannot
/// be listed, in which case loopback and the unspecified address are still
/// covered by the guard itself).
fn wildcard_local_addrs(own_listeners: &[SocketAddr]) -> Vec<std::net::IpAddr> {
    if !own_listeners.iter().any(|a| a.ip().is_unspecified()) {
        return Vec::new();
    }
    match if_addrs::get_if_addrs() {
        Ok(ifaces) => ifaces.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list local addresses for the network guard");
            Vec::new()
        }
    }
}

/// Everything that derives from one configuration.
pub struct Active {
    pub policy: Policy,
    pub upstream: Arc<Upstream>,
    /// Query parameters whose values are redacted in logged paths.
    pub redact_query_params: Vec<String>,
    /// The resolved admin bearer token, when one is configured.
    admin_token: Option<Secret>,
    own_listeners: Vec<SocketAddr>,
}

impl Active {
    /// Builds the runtime state for `policy`. When `prev` ran with the same
    /// upstream, DNS and guard settings its pooled client (and warm
    /// connections) is reused.
    pub fn build(
        policy: Policy,
        own_listeners: &[SocketAddr],
        prev: Option<&Active>,
    ) -> Result<Active, BuildError> {
        let cfg = policy.config();
        let reusable = prev.filter(|p| {
            let old = p.policy.config();
            old.upstream == cfg.upstream
                && old.dns == cfg.dns
                && old.network_guard == cfg.network_guard
                && p.own_listeners == own_listeners
        });
        let upstream = match reusable {
            Some(p) => p.upstream.clone(),
            None => {
                let guard = NetworkGuard::new(&cfg.network_guard, own_listeners)
                    .map_err(BuildError::Guard)?
                    .with_local_addrs(wildcard_local_addrs(own_listeners));
                let resolver =
                    Resolver::new(&cfg.dns).map_err(|e| BuildError::Dns(e.to_string()))?;
                let tls = tls::client_config(&cfg.upstream)?;
                Arc::new(Upstream::new(
                    &cfg.upstream,
                    Arc::new(resolver),
                    Arc::new(guard),
                    tls,
                ))
            }
        };
        let redact_query_params = cfg.logging.redact_query_params.clone();
        let admin_token = match &cfg.admin.token {
            Some(r) => Some(r.resolve().map_err(BuildError::AdminToken)?),
            None => None,
        };
        Ok(Active {
            policy,
            upstream,
            redact_query_params,
            admin_token,
            own_listeners: own_listeners.to_vec(),
        })
    }

    /// The admin API's bearer token (resolved from its secret reference).
    pub fn admin_token(&self) -> Option<&Secret> {
        self.admin_token.as_ref()
    }
}

/// The process-wide gateway.
pub struct Gateway {
    pub active: ArcSwap<Active>,
    pub switches: Switches,
    /// Rate-limit counters. Kept here, not in [`Active`], so a reload does not
    /// reset them: keys are `<api>:<limit>:<scope>`, and a limit whose
    /// algorithm changes starts afresh (see `tollgate-state`).
    pub limits: LocalStore,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    pub shutdown: Shutdown,
}

impl Gateway {
    /// How long in-flight requests and tunnels may run on after shutdown begins.
    pub fn shutdown_grace(&self) -> std::time::Duration {
        self.active
            .load()
            .policy
            .config()
            .server
            .shutdown_grace
            .get()
    }

    /// Builds the gateway for an already compiled policy. `own_listeners` are
    /// the bound proxy and admin addresses (the guard refuses to connect back
    /// to them).
    pub fn new(
        policy: Policy,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
        own_listeners: &[SocketAddr],
    ) -> Result<Arc<Gateway>, BuildError> {
        let active = Active::build(policy, own_listeners, None)?;
        Ok(Arc::new(Gateway {
            active: ArcSwap::from_pointee(active),
            switches: Switches::default(),
            limits: LocalStore::new(),
            metrics,
            access_log,
            shutdown: Shutdown::new(),
        }))
    }
}

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
