//! The gateway's shared state. [`Gateway`] lives for the whole process;
//! [`Active`] is everything derived from one configuration (compiled policy,
//! network guard, resolver, pooled upstream client) and is swapped atomically
//! on reload. A request loads its `Arc<Active>` once and keeps it to the end,
//! so in-flight requests finish on the configuration they started with.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderName;
use tollgate_config::Secret;
use tollgate_policy::{LocalStore, Policy, Switches};
use tollgate_telemetry::{AccessLog, Metrics};

use crate::dns::Resolver;
use crate::guard::NetworkGuard;
use crate::limit_store::GlobalStore;
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
    /// A `state.redis` setting (its key) that cannot be used.
    #[error("{0}: {1}")]
    Redis(&'static str, String),
    #[error(transparent)]
    Intercept(#[from] crate::intercept::InterceptError),
    #[error(transparent)]
    ProxyTls(#[from] crate::tls_listener::ProxyTlsError),
}

impl BuildError {
    /// The configuration key the failure belongs to, for locating it in the file.
    pub fn key_path(&self) -> &'static str {
        match self {
            Self::Guard(_) => "network_guard",
            Self::Dns(_) => "dns",
            Self::Tls(_) => "upstream.ca_file",
            Self::AdminToken(_) => "admin.token",
            Self::Redis(key, _) => key,
            Self::Intercept(e) => e.key_path(),
            Self::ProxyTls(e) => e.key_path(),
        }
    }
}

/// When a listener is bound to `0.0.0.0` or `::`, it is reachable on every
/// address of this host; the guard must know them all to refuse connecting
/// back to itself. Empty when no listener is a wildcard (or interfaces cannot
/// be listed, in which case loopback and the unspecified address are still
/// covered by the guard itself).
pub(crate) fn wildcard_local_addrs(own_listeners: &[SocketAddr]) -> Vec<std::net::IpAddr> {
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
    /// OAuth tokens of `credentials.oauth2` keys (kept across a reload when unchanged).
    pub tokens: Arc<crate::oauth::Tokens>,
    /// Query parameters whose values are redacted in logged paths.
    pub redact_query_params: Vec<String>,
    /// The interception CA and leaf cache, when `tls_intercept` is configured.
    pub intercept: Option<Arc<crate::intercept::Interceptor>>,
    /// The TLS listener's configuration (`listen.proxy_tls`), files re-read on every build.
    pub proxy_tls: Option<Arc<rustls::ServerConfig>>,
    /// Upstream groups by API name (balance.rs); their health checks run while this
    /// configuration is alive.
    pub groups: crate::balance::Groups,
    /// CORS policies of route APIs (cors.rs).
    pub cors: crate::cors::CorsTable,
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
        Self::build_counted(policy, own_listeners, prev, None)
    }

    /// [`Active::build`], with `metrics` counting the JWKS fetches it starts.
    pub fn build_counted(
        policy: Policy,
        own_listeners: &[SocketAddr],
        prev: Option<&Active>,
        metrics: Option<&Arc<Metrics>>,
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
        if let Some(r) = &cfg.state.redis {
            // Checked here so `validate` and a reload refuse what the shared store would.
            crate::limit_store::check_config(r).map_err(|e| BuildError::Redis(e.key, e.message))?;
        }
        let mut redact_query_params = cfg.logging.redact_query_params.clone();
        // API keys in the query string are never logged (docs/auth.md).
        for name in cfg.api_key_query_params() {
            if !redact_query_params
                .iter()
                .any(|p| p.eq_ignore_ascii_case(name))
            {
                redact_query_params.push(name.to_owned());
            }
        }
        let admin_token = match &cfg.admin.token {
            Some(r) => Some(r.resolve().map_err(BuildError::AdminToken)?),
            None => None,
        };
        // An unreadable or mismatched CA is a build error (validate and reload refuse it).
        let intercept = match &cfg.tls_intercept {
            Some(t) => Some(crate::intercept::Interceptor::build(
                t,
                prev.and_then(|p| p.intercept.as_ref()),
            )?),
            None => None,
        };
        // Unreadable or mismatched certificate, key, CA or CRL: a build error.
        let proxy_tls = match &cfg.listen.proxy_tls {
            Some(t) => Some(crate::tls_listener::server_config(t)?),
            None => None,
        };
        let tokens = Arc::new(crate::oauth::Tokens::new(
            &policy,
            upstream.connector.clone(),
            prev.map(|p| &*p.tokens),
        ));
        let groups = crate::balance::Groups::build(cfg, own_listeners)?;
        let cors = crate::cors::CorsTable::build(cfg);
        // JWT issuers' key sets (docs/auth.md): fetched in the background.
        crate::jwks::start(
            &policy,
            upstream.connector.clone(),
            prev.map(|p| &p.policy),
            metrics,
        );
        Ok(Active {
            policy,
            upstream,
            groups,
            cors,
            tokens,
            redact_query_params,
            intercept,
            proxy_tls,
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
    /// The shared store for `scope: global` limits (`state.redis`), kept across reloads with
    /// the same settings (see [`Gateway::sync_state`]).
    pub global: ArcSwapOption<GlobalStore>,
    /// `state.dir` as it was at start (where `limits` are persisted; see `persist.rs`).
    pub state_dir: Option<std::path::PathBuf>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    pub shutdown: Shutdown,
    /// Circuit breakers, provider back-offs and retry budgets by API name; kept
    /// across reloads for APIs whose settings did not change.
    pub resilience: crate::resilience::Registry,
    /// Wait queues of limits with `on_limit: { queue }` and per-API concurrency limiters, kept
    /// across reloads.
    pub waiting: crate::waiting::Waiting,
    /// The shared response cache (`apis[].cache`), bounded by `cache.max_bytes` as it was
    /// at start; kept across reloads (keys include the API name).
    pub cache: Arc<crate::cache::ResponseCache>,
    /// Endpoints seen (API discovery, `discovery.rs`); kept across reloads.
    pub discovery: crate::discovery::Discovery,
    /// OpenTelemetry span export (`telemetry.tracing`); empty when off, so requests do no
    /// tracing work. Rebuilt on reload only when its settings change ([`Gateway::sync_tracer`]).
    pub tracer: ArcSwapOption<tollgate_trace::Tracer>,
    /// Usage aggregation for the control plane (`usage.rs`); set only for managed gateways.
    pub usage: ArcSwapOption<crate::usage::Usage>,
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
        let active = Active::build_counted(policy, own_listeners, None, Some(&metrics))?;
        let state_dir = active
            .policy
            .config()
            .state
            .dir
            .as_deref()
            .map(std::path::PathBuf::from);
        let active_cfg_cache_bytes = active.policy.config().cache.max_bytes.get();
        let gw = Arc::new(Gateway {
            active: ArcSwap::from_pointee(active),
            switches: Switches::default(),
            limits: LocalStore::new(),
            global: ArcSwapOption::empty(),
            state_dir,
            resilience: crate::resilience::Registry::new(metrics.clone()),
            waiting: crate::waiting::Waiting::default(),
            cache: crate::cache::ResponseCache::new(active_cfg_cache_bytes, metrics.clone()),
            discovery: crate::discovery::Discovery::new(metrics.clone()),
            tracer: ArcSwapOption::empty(),
            usage: ArcSwapOption::empty(),
            metrics,
            access_log,
            shutdown: Shutdown::new(),
        });
        gw.sync_state();
        gw.sync_tracer();
        gw.active.load().groups.start(&gw.metrics);
        crate::persist::start(&gw);
        Ok(gw)
    }

    /// Makes the span exporter match the active config's `telemetry.tracing`: kept when
    /// unchanged, replaced when changed (the old one sends what it has queued, then stops),
    /// dropped when removed. An exporter that cannot be built is logged and tracing stays off.
    pub fn sync_tracer(&self) {
        let active = self.active.load();
        let wanted = active.policy.config().telemetry.tracing.as_ref();
        match (wanted, self.tracer.load_full()) {
            (None, None) => {}
            (None, Some(_)) => self.tracer.store(None),
            (Some(t), Some(cur)) if cur.same_config(t) => {}
            (Some(t), _) => match tollgate_trace::Tracer::start(t, Arc::clone(&self.metrics)) {
                Ok(tr) => self.tracer.store(Some(tr)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the span exporter; tracing is off");
                    self.tracer.store(None);
                }
            },
        }
    }

    /// Makes the shared store match the active config's `state.redis`: kept when unchanged,
    /// replaced when changed, dropped when removed. A store that cannot start (only a bad URL;
    /// Redis being down is not an error) is logged; global limits then follow their
    /// `on_store_failure`.
    pub fn sync_state(&self) {
        let active = self.active.load();
        let wanted = active.policy.config().state.redis.as_ref();
        let current = self.global.load_full();
        match (wanted, current) {
            (None, None) => {}
            (None, Some(_)) => self.global.store(None),
            (Some(r), Some(g)) if g.same_config(r) => {}
            (Some(r), _) => match GlobalStore::start(r, Arc::clone(&self.metrics)) {
                Ok(g) => self.global.store(Some(g)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the shared limit store");
                    self.global.store(None);
                }
            },
        }
    }
}

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
