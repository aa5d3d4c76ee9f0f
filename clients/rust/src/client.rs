//! `FailSafeClient`: sends managed hosts through Tollgate (proxy or route
//! mode) and goes directly to the provider only when `core::decide_*` says the
//! gateway provably did not forward the request. What a caller sees: the
//! provider's answer (via the gateway or direct), Tollgate's own policy answers
//! (403, 429, ...) unchanged, or an `Error` — `Error::NotResent` when the
//! gateway failed after a non-idempotent request may have gone upstream.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Request, Response, Url};

use crate::config::{Config, ConfigError, Mode};
use crate::core::{self, Breaker, BreakerState, Counter, Counters, Decision, Outcome, Slot, Stats};

/// What `execute` and `send` return on failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tollgate client configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// The request failed (through the gateway when fallback did not apply, or directly).
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The connection to the gateway broke after a non-idempotent request may
    /// have been forwarded: it was not re-sent, to avoid doing it twice.
    #[error("request not re-sent after the gateway failed ({reason}): {source}")]
    NotResent {
        reason: String,
        #[source]
        source: reqwest::Error,
    },
}

struct Inner {
    config: Config,
    direct: reqwest::Client,
    gateway: reqwest::Client,
    breaker: Breaker,
    counters: Counters,
    gateway_headers: HeaderMap,
}

/// Cheap to clone: clones share the connection pools, the breaker and the counters.
#[derive(Clone)]
pub struct FailSafeClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FailSafeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailSafeClient")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn tls_config() -> Result<rustls::ClientConfig, Error> {
    // The workspace's one crypto provider (aws-lc-rs) and the platform's roots;
    // a root that fails to parse is skipped, as rustls-native-certs advises.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl FailSafeClient {
    /// Builds the direct and gateway HTTP clients. Environment proxies
    /// (`HTTP_PROXY`...) are ignored on both: the gateway is the only proxy used.
    pub fn new(config: Config) -> Result<Self, Error> {
        Self::with_builders(
            config,
            reqwest::Client::builder(),
            reqwest::Client::builder(),
        )
    }

    /// Like `new`, starting from caller-made builders (timeouts, TLS roots,
    /// user agent...). Proxy settings are replaced; TLS is set only when the
    /// builder has none (call `use_preconfigured_tls` to bring your own).
    pub fn with_builders(
        config: Config,
        direct: reqwest::ClientBuilder,
        gateway: reqwest::ClientBuilder,
    ) -> Result<Self, Error> {
        let mut gateway_headers = HeaderMap::new();
        for (k, v) in &config.gateway_headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| ConfigError(format!("gateway_headers: invalid header name {k:?}")))?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                ConfigError(format!("gateway_headers[{k:?}]: invalid header value"))
            })?;
            gateway_headers.append(name, value);
        }
        let direct = direct
            .use_preconfigured_tls(tls_config()?)
            .no_proxy()
            .build()
            .map_err(Error::Build)?;
        let mut gw = gateway
            .use_preconfigured_tls(tls_config()?)
            .no_proxy()
            // A black-holed gateway costs at most this before going direct.
            .connect_timeout(config.connect_timeout);
        if let (Mode::Proxy, Some(url)) = (config.mode, config.gateway_url.as_ref()) {
            // Gateway headers travel on the proxy hop only (the CONNECT request
            // for https), never inside the tunnel to the provider.
            let proxy = reqwest::Proxy::all(url.as_str()).map_err(Error::Build)?;
            gw = gw.proxy(proxy.headers(gateway_headers.clone()));
        }
        let gateway = gw.build().map_err(Error::Build)?;
        let breaker = Breaker::new(config.breaker_threshold, config.breaker_cooldown);
        Ok(FailSafeClient {
            inner: Arc::new(Inner {
                config,
                direct,
                gateway,
                breaker,
                counters: Counters::default(),
                gateway_headers,
            }),
        })
    }

    /// `Config::from_env()` then `new`.
    pub fn from_env() -> Result<Self, Error> {
        Self::new(Config::from_env()?)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// This client's counters.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Start-up check: can a TCP connection to the gateway be opened? On
    /// failure the breaker opens (requests go direct for one cool-down, then a
    /// probe tries the gateway again): a failed check never disables the
    /// gateway for good.
    pub async fn health_check(&self) -> bool {
        let cfg = &self.inner.config;
        let Some(url) = cfg.gateway_url.as_ref() else {
            return false;
        };
        let host = url
            .host_str()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let res = tokio::time::timeout(
            cfg.connect_timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await;
        let error = match res {
            Ok(Ok(_)) => return true,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timeout".to_string(),
        };
        self.inner.breaker.trip();
        self.inner.counters.incr(Counter::BreakerOpened);
        tracing::warn!(
            tollgate.event = "health_check_failed",
            tollgate.gateway = %url,
            tollgate.error = %error,
            "tollgate_client health check failed"
        );
        false
    }

    /// A request builder on this client; finish with `.send().await`.
    pub fn request(&self, method: Method, url: impl reqwest::IntoUrl) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            inner: self.inner.direct.request(method, url),
        }
    }

    pub fn get(&self, url: impl reqwest::IntoUrl) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: impl reqwest::IntoUrl) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    /// Sends `req` through the gateway when its host is managed, directly when
    /// it is not or when the fallback table allows it.
    pub async fn execute(&self, req: Request) -> Result<Response, Error> {
        let inner = &*self.inner;
        let cfg = &inner.config;
        if !cfg.managed(req.url()) {
            if cfg.enabled() {
                inner.counters.incr(Counter::Unmanaged);
            }
            return Ok(inner.direct.execute(req).await?);
        }
        let method = req.method().clone();
        let url = req.url().clone();
        if !cfg.fallback {
            // Fallback off: the gateway's answer or error surfaces unchanged
            // (and, as in the Python client, nothing is counted).
            return Ok(inner.gateway.execute(self.gateway_request(req)?).await?);
        }
        let Some(slot) = inner.breaker.acquire() else {
            self.fallback(&method, &url, "breaker_open", None, None);
            return Ok(inner.direct.execute(req).await?);
        };
        if slot == Slot::Probe {
            inner.counters.incr(Counter::Probes);
        }
        let idempotent = core::is_idempotent(&method, req.headers());
        // A streaming body cannot be replayed: such a request is never re-sent.
        let spare = req.try_clone();
        let resendable = spare.is_some();
        let gw_req = self.gateway_request(req)?;
        match inner.gateway.execute(gw_req).await {
            Err(e) => {
                let (kind, detail) = classify(&e);
                let d = core::decide_on_error(kind, detail, idempotent, resendable);
                if d.gateway_fault {
                    self.record_fault();
                } else if slot == Slot::Probe {
                    inner.breaker.release_probe();
                }
                match spare {
                    Some(direct_req) if d.fallback => {
                        self.fallback(&method, &url, detail, None, Some(&e));
                        Ok(inner.direct.execute(direct_req).await?)
                    }
                    _ if kind == Outcome::MaybeSent || (d.gateway_fault && !d.fallback) => {
                        self.not_resent(&method, &url, detail, &e.to_string());
                        Err(Error::NotResent {
                            reason: detail.to_string(),
                            source: e,
                        })
                    }
                    _ => Err(Error::Http(e)),
                }
            }
            Ok(resp) => {
                let code = resp
                    .headers()
                    .get("tollgate-error")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let d: Decision = core::decide_on_response(code.as_deref(), idempotent, resendable);
                if !d.gateway_fault {
                    inner.breaker.success();
                    inner.counters.incr(Counter::ViaGateway);
                    return Ok(resp);
                }
                self.record_fault();
                match spare {
                    Some(direct_req) if d.fallback => {
                        drop(resp);
                        self.fallback(&method, &url, &d.reason, code.as_deref(), None);
                        Ok(inner.direct.execute(direct_req).await?)
                    }
                    _ => {
                        let reason = format!("gateway_error:{}", code.as_deref().unwrap_or("-"));
                        self.not_resent(&method, &url, &reason, "returned as is");
                        Ok(resp)
                    }
                }
            }
        }
    }

    /// The request as the gateway must see it: route mode rewrites the URL and
    /// adds the gateway headers; proxy mode sends it unchanged (the proxy
    /// carries the headers).
    fn gateway_request(&self, mut req: Request) -> Result<Request, Error> {
        let cfg = &self.inner.config;
        if cfg.mode == Mode::Route {
            *req.url_mut() = cfg.route_url(req.url())?;
            for (k, v) in &self.inner.gateway_headers {
                req.headers_mut().insert(k.clone(), v.clone());
            }
        }
        Ok(req)
    }

    fn record_fault(&self) {
        if self.inner.breaker.failure() {
            self.inner.counters.incr(Counter::BreakerOpened);
            tracing::warn!(
                tollgate.event = "breaker_open",
                tollgate.cooldown_s = self.inner.config.breaker_cooldown.as_secs_f64(),
                "tollgate_client breaker opened"
            );
        }
    }

    fn fallback(
        &self,
        method: &Method,
        url: &Url,
        reason: &str,
        code: Option<&str>,
        error: Option<&reqwest::Error>,
    ) {
        let key = match code {
            Some(c) => format!("{reason}:{c}"),
            None => reason.to_string(),
        };
        self.inner.counters.fallback(&key);
        tracing::warn!(
            tollgate.event = "fallback",
            tollgate.reason = reason,
            tollgate.code = code.unwrap_or("-"),
            tollgate.method = %method,
            tollgate.url = %redact(url),
            tollgate.breaker = self.inner.breaker.state().as_str(),
            tollgate.error = %error.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            "tollgate_client fallback"
        );
    }

    fn not_resent(&self, method: &Method, url: &Url, reason: &str, error: &str) {
        self.inner.counters.incr(Counter::NotResent);
        tracing::error!(
            tollgate.event = "not_resent",
            tollgate.reason = reason,
            tollgate.method = %method,
            tollgate.url = %redact(url),
            tollgate.error = error,
            "tollgate_client not re-sent"
        );
    }
}

/// Scheme, host and path only: query strings and userinfo may carry secrets.
fn redact(url: &Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(p) = url.port() {
        s.push_str(&format!(":{p}"));
    }
    s.push_str(url.path());
    s
}

/// Maps a reqwest error on the gateway attempt to the Python client's outcome kinds.
fn classify(e: &reqwest::Error) -> (Outcome, &'static str) {
    let mut text = String::new();
    let mut io_kind = None;
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = src {
        text.push_str(&x.to_string().to_ascii_lowercase());
        text.push('\n');
        if io_kind.is_none() {
            io_kind = x.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
        }
        src = x.source();
    }
    if e.is_connect() {
        if text.contains("tunnel") {
            return (Outcome::TunnelRefused, "tunnel_refused");
        }
        if e.is_timeout() || text.contains("timed out") {
            return (Outcome::NotSent, "connect_timeout");
        }
        use std::io::ErrorKind as K;
        if matches!(
            io_kind,
            Some(
                K::ConnectionRefused
                    | K::AddrNotAvailable
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            )
        ) || text.contains("dns error")
        {
            return (Outcome::NotSent, "gateway_unreachable");
        }
        // TLS failures and the like: nothing to learn about availability.
        return (Outcome::Other, "connect_error");
    }
    if e.is_timeout() {
        return (Outcome::Timeout, "read_timeout");
    }
    if e.is_request() || e.is_body() {
        return (Outcome::MaybeSent, "connection_lost");
    }
    (Outcome::Other, "other")
}

/// `reqwest::RequestBuilder` whose `send` goes through `FailSafeClient::execute`.
#[derive(Debug)]
pub struct RequestBuilder {
    client: FailSafeClient,
    inner: reqwest::RequestBuilder,
}

impl RequestBuilder {
    pub fn header<K, V>(self, key: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        RequestBuilder {
            client: self.client,
            inner: self.inner.header(key, value),
        }
    }

    pub fn headers(self, headers: HeaderMap) -> Self {
        RequestBuilder {
            client: self.client,
            inner: self.inner.headers(headers),
        }
    }

    pub fn body<T: Into<reqwest::Body>>(self, body: T) -> Self {
        RequestBuilder {
            client: self.client,
            inner: self.inner.body(body),
        }
    }

    /// Whole-request timeout (both for the gateway attempt and a direct call).
    pub fn timeout(self, timeout: Duration) -> Self {
        RequestBuilder {
            client: self.client,
            inner: self.inner.timeout(timeout),
        }
    }

    /// Any other reqwest builder setting.
    pub fn map(self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        RequestBuilder {
            client: self.client,
            inner: f(self.inner),
        }
    }

    pub async fn send(self) -> Result<Response, Error> {
        let req = self.inner.build()?;
        self.client.execute(req).await
    }
}
