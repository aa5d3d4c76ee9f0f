//! Configuration: where the gateway is, which hosts go through it and how,
//! and how eagerly to fall back. Built in code (`Config::builder()`) or from
//! the same `TOLLGATE_*` variables as the Python client (`Config::from_env()`).
//! An invalid value is a `ConfigError` naming the variable or field; nothing
//! is silently ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;

/// How a managed request reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Tollgate is the HTTP forward proxy (plain requests, `CONNECT` for https).
    Proxy,
    /// The URL is rewritten to `<gateway>/<route><path?query>`.
    Route,
}

/// A configuration value (argument or environment variable) is invalid.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// How requests are sent through Tollgate (see README.md for every field).
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) gateway_url: Option<Url>,
    pub(crate) mode: Mode,
    pub(crate) hosts: Vec<String>,
    pub(crate) routes: BTreeMap<String, String>,
    pub(crate) fallback: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) gateway_headers: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway_url: None,
            mode: Mode::Proxy,
            hosts: Vec::new(),
            routes: BTreeMap::new(),
            fallback: true,
            connect_timeout: Duration::from_secs(2),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(30),
            gateway_headers: Vec::new(),
        }
    }
}

fn norm_host(h: &str) -> String {
    h.trim()
        .to_ascii_lowercase()
        .trim_end_matches('.')
        .to_string()
}

fn parse_bool(name: &str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(err(format!("{name}: expected on|off, got {raw:?}"))),
    }
}

fn parse_secs(name: &str, raw: &str, minimum: f64) -> Result<Duration, ConfigError> {
    let v: f64 = raw
        .trim()
        .parse()
        .map_err(|_| err(format!("{name}: expected a number of seconds, got {raw:?}")))?;
    if !v.is_finite() || v < minimum {
        return Err(err(format!("{name}: must be >= {minimum}, got {raw:?}")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// `a=b,c=d` -> [(a, b), (c, d)]; blank items ignored.
fn parse_pairs(name: &str, raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
            _ => {
                return Err(err(format!(
                    "{name}: expected key=value items separated by commas, got {item:?}"
                )));
            }
        }
    }
    Ok(out)
}

impl Config {
    /// Starts from the defaults (no gateway: everything goes direct).
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            cfg: Config::default(),
            gateway_url: None,
            routes: Vec::new(),
        }
    }

    /// Reads `TOLLGATE_URL`, `TOLLGATE_MODE`, `TOLLGATE_HOSTS`, `TOLLGATE_ROUTES`,
    /// `TOLLGATE_FALLBACK`, `TOLLGATE_CONNECT_TIMEOUT`, `TOLLGATE_BREAKER_THRESHOLD`,
    /// `TOLLGATE_BREAKER_COOLDOWN` and `TOLLGATE_HEADERS` from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::env_builder(|k| std::env::var(k).ok())?.build()
    }

    /// Like `from_env`, reading variables through `get` (tests, or layering
    /// code settings over the environment before `build()`).
    pub fn env_builder(get: impl Fn(&str) -> Option<String>) -> Result<ConfigBuilder, ConfigError> {
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut b = Config::builder();
        if let Some(v) = var("TOLLGATE_URL") {
            b = b.gateway_url(v);
        }
        if let Some(v) = var("TOLLGATE_MODE") {
            b = b.mode(match v.trim().to_ascii_lowercase().as_str() {
                "proxy" => Mode::Proxy,
                "route" => Mode::Route,
                _ => {
                    return Err(err(format!(
                        "TOLLGATE_MODE: expected 'route' or 'proxy', got {v:?}"
                    )));
                }
            });
        }
        if let Some(v) = var("TOLLGATE_HOSTS") {
            b = b.hosts(v.split(',').filter(|h| !h.trim().is_empty()));
        }
        if let Some(v) = var("TOLLGATE_ROUTES") {
            for (host, route) in parse_pairs("TOLLGATE_ROUTES", &v)? {
                b = b.route(host, route);
            }
        }
        if let Some(v) = var("TOLLGATE_FALLBACK") {
            b = b.fallback(parse_bool("TOLLGATE_FALLBACK", &v)?);
        }
        if let Some(v) = var("TOLLGATE_CONNECT_TIMEOUT") {
            b = b.connect_timeout(parse_secs("TOLLGATE_CONNECT_TIMEOUT", &v, 0.001)?);
        }
        if let Some(v) = var("TOLLGATE_BREAKER_THRESHOLD") {
            let n = v.trim().parse().map_err(|_| {
                err(format!(
                    "TOLLGATE_BREAKER_THRESHOLD: expected an integer, got {v:?}"
                ))
            })?;
            b = b.breaker_threshold(n);
        }
        if let Some(v) = var("TOLLGATE_BREAKER_COOLDOWN") {
            b = b.breaker_cooldown(parse_secs("TOLLGATE_BREAKER_COOLDOWN", &v, 0.0)?);
        }
        if let Some(v) = var("TOLLGATE_HEADERS") {
            for (k, val) in parse_pairs("TOLLGATE_HEADERS", &v)? {
                b = b.gateway_header(k, val);
            }
        }
        Ok(b)
    }

    /// No gateway URL: every request goes direct (and nothing counts as a fallback).
    pub fn enabled(&self) -> bool {
        self.gateway_url.is_some()
    }

    pub fn gateway_url(&self) -> Option<&Url> {
        self.gateway_url.as_ref()
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn breaker_cooldown(&self) -> Duration {
        self.breaker_cooldown
    }

    /// Table keys tried for a destination, as the Python client does: an
    /// explicit non-default port only matches `host:port`; a default port
    /// matches `host` or `host:<default>`.
    fn lookup_keys(scheme: &str, host: &str, port: Option<u16>) -> Vec<String> {
        let host = norm_host(host);
        let default_port = if scheme == "https" { 443 } else { 80 };
        match port {
            Some(p) if p != default_port => vec![format!("{host}:{p}")],
            _ => vec![host.clone(), format!("{host}:{default_port}")],
        }
    }

    /// Route mode: the route prefix for this URL, or None if it is not managed.
    pub fn route_for(&self, url: &Url) -> Option<&str> {
        let host = url.host_str()?;
        Self::lookup_keys(url.scheme(), host, url.port())
            .iter()
            .find_map(|k| self.routes.get(k).map(String::as_str))
    }

    /// Proxy mode: whether this URL is sent through the gateway.
    pub fn proxied(&self, url: &Url) -> bool {
        if self.hosts.iter().any(|h| h == "*") {
            return true;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        Self::lookup_keys(url.scheme(), host, url.port())
            .iter()
            .any(|k| self.hosts.contains(k))
    }

    /// Whether requests to this URL go through the gateway at all.
    pub fn managed(&self, url: &Url) -> bool {
        if !self.enabled() || !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        match self.mode {
            Mode::Route => self.route_for(url).is_some(),
            Mode::Proxy => self.proxied(url),
        }
    }

    /// Route mode: `<gateway>/<route><path?query>` for this URL.
    pub fn route_url(&self, url: &Url) -> Result<Url, ConfigError> {
        let (Some(gw), Some(route)) = (self.gateway_url.as_ref(), self.route_for(url)) else {
            return Err(err(format!(
                "no route configured for {:?}",
                url.host_str().unwrap_or("")
            )));
        };
        let mut target = url.path().to_string();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let base = gw.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{route}{target}"))
            .map_err(|e| err(format!("route url for {url}: {e}")))
    }
}

/// Builds a validated `Config`; every setter mirrors a `TOLLGATE_*` variable.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    cfg: Config,
    gateway_url: Option<String>,
    routes: Vec<(String, String)>,
}

impl ConfigBuilder {
    /// Tollgate's proxy listener, e.g. `http://127.0.0.1:8080` (`TOLLGATE_URL`).
    pub fn gateway_url(mut self, url: impl Into<String>) -> Self {
        self.gateway_url = Some(url.into());
        self
    }
    /// `Mode::Proxy` (default) or `Mode::Route` (`TOLLGATE_MODE`).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.cfg.mode = mode;
        self
    }
    /// Proxy mode: hosts (`host` or `host:port`, `*` = all) sent through the gateway (`TOLLGATE_HOSTS`).
    pub fn hosts<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, hosts: I) -> Self {
        self.cfg.hosts.extend(
            hosts
                .into_iter()
                .map(|h| norm_host(h.as_ref()))
                .filter(|h| !h.is_empty()),
        );
        self
    }
    /// Route mode: `host` (or `host:port`) -> route prefix such as `/github` (`TOLLGATE_ROUTES`).
    pub fn route(mut self, host: impl Into<String>, route: impl Into<String>) -> Self {
        self.routes.push((host.into(), route.into()));
        self
    }
    /// Go direct when the gateway is unavailable (default on; `TOLLGATE_FALLBACK`).
    pub fn fallback(mut self, on: bool) -> Self {
        self.cfg.fallback = on;
        self
    }
    /// Wait for a TCP connection to the gateway before going direct (default 2 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.cfg.connect_timeout = d;
        self
    }
    /// Consecutive gateway faults that open the breaker (default 3).
    pub fn breaker_threshold(mut self, n: u32) -> Self {
        self.cfg.breaker_threshold = n;
        self
    }
    /// How long the breaker stays open before one probe tries the gateway (default 30 s).
    pub fn breaker_cooldown(mut self, d: Duration) -> Self {
        self.cfg.breaker_cooldown = d;
        self
    }
    /// A header sent only to the gateway (e.g. a consumer key), never on a direct call.
    pub fn gateway_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.cfg.gateway_headers.push((name.into(), value.into()));
        self
    }

    pub fn build(self) -> Result<Config, ConfigError> {
        let mut cfg = self.cfg;
        if let Some(raw) = self.gateway_url {
            let url = Url::parse(raw.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| {
                    err(format!(
                        "gateway_url: expected http://host:port, got {raw:?}"
                    ))
                })?;
            cfg.gateway_url = Some(url);
        }
        for (host, route) in self.routes {
            let route = format!("/{}", route.trim().trim_matches('/'));
            if route == "/" {
                return Err(err(format!(
                    "routes[{host:?}]: the route must not be empty"
                )));
            }
            cfg.routes.insert(norm_host(&host), route);
        }
        if cfg.mode == Mode::Route && cfg.gateway_url.is_some() && cfg.routes.is_empty() {
            return Err(err(
                "routes: route mode needs at least one host=route mapping",
            ));
        }
        if cfg.breaker_threshold < 1 {
            return Err(err("breaker_threshold: must be >= 1"));
        }
        if cfg.connect_timeout.is_zero() {
            return Err(err("connect_timeout: must be > 0"));
        }
        Ok(cfg)
    }
}
