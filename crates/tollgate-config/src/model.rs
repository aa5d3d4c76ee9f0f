//! The configuration types: what a user writes in `tollgate.yaml`.
//!
//! Every struct rejects unknown keys. Types here carry no logic beyond parsing
//! their own scalar forms (durations, sizes, secret references); cross-field
//! validation lives in `validate.rs`, and compilation into matchers lives in
//! `tollgate-policy`.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;
use crate::units::{ByteSize, Duration};

/// The whole configuration file. `Default` is what an empty file means.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Admin API settings (token, which is required when admin binds beyond loopback).
    #[serde(default)]
    pub admin: Admin,
    /// What happens to traffic to a destination that no API matches.
    #[serde(default)]
    pub default_action: DefaultAction,
    /// Global report mode: every policy decides and logs, nothing is enforced.
    #[serde(default)]
    pub report_only: bool,
    /// SSRF protection for every upstream connection.
    #[serde(default)]
    pub network_guard: NetworkGuard,
    /// How Tollgate resolves upstream host names.
    #[serde(default)]
    pub dns: Dns,
    /// Upstream connection settings.
    #[serde(default)]
    pub upstream: Upstream,
    /// CONNECT tunnel settings.
    #[serde(default)]
    pub connect: Connect,
    /// Inbound connection limits and timeouts.
    #[serde(default)]
    pub server: Server,
    /// Access log and redaction.
    #[serde(default)]
    pub logging: Logging,
    /// What to do with callers that match no consumer.
    #[serde(default)]
    pub unknown_consumer: UnknownConsumer,
    /// Named callers.
    #[serde(default)]
    pub consumers: Vec<Consumer>,
    /// Third-party APIs Tollgate governs.
    #[serde(default)]
    pub apis: Vec<Api>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Proxy listener (forward proxy, CONNECT and routes on one port).
    #[serde(default = "default_proxy_addr")]
    pub proxy: SocketAddr,
    /// Admin listener (metrics, health, reload, switches).
    #[serde(default = "default_admin_addr")]
    pub admin: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            proxy: default_proxy_addr(),
            admin: default_admin_addr(),
        }
    }
}

fn default_proxy_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Bearer token required on every admin call when set. Mandatory when the
    /// admin listener is not bound to loopback.
    #[serde(default)]
    pub token: Option<SecretRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    /// Refuse traffic to destinations no API matches (403 `destination_not_allowed`).
    Deny,
    /// Forward it.
    #[default]
    Allow,
    /// Forward it, but log that `deny` would have refused it.
    Report,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkGuard {
    /// CIDRs (`10.1.2.0/24`), addresses, or `ip:port` entries that are always allowed,
    /// even when a built-in rule would deny them.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Extra CIDRs, addresses, or `ip:port` entries to deny.
    #[serde(default)]
    pub deny: Vec<String>,
    /// UNSAFE: allow RFC 1918 / fc00::/7 private ranges. Metadata, loopback,
    /// link-local and CGNAT stay denied regardless.
    #[serde(default)]
    pub allow_private: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// DNS servers (`ip:port`, UDP and TCP). Empty: the system resolver configuration.
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    /// Per-lookup timeout.
    #[serde(default = "Duration::secs_5")]
    pub timeout: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            timeout: Duration::secs_5(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// TCP (and TLS handshake) connect timeout.
    #[serde(default = "Duration::secs_5")]
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to receiving response headers.
    #[serde(default = "Duration::secs_60")]
    pub response_header_timeout: Duration,
    /// How long an unused pooled connection is kept.
    #[serde(default = "Duration::secs_90")]
    pub idle_timeout: Duration,
    /// Max idle pooled connections per upstream host.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    /// Extra PEM CA bundle trusted in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Offer HTTP/2 in ALPN to TLS upstreams.
    #[serde(default = "yes")]
    pub http2: bool,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::secs_5(),
            response_header_timeout: Duration::secs_60(),
            idle_timeout: Duration::secs_90(),
            pool_max_idle_per_host: default_pool_max_idle(),
            ca_file: None,
            http2: true,
        }
    }
}

fn default_pool_max_idle() -> usize {
    64
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    /// Ports CONNECT may open tunnels to.
    #[serde(default = "default_connect_ports")]
    pub allowed_ports: Vec<u16>,
    /// A tunnel with no bytes in either direction for this long is closed.
    #[serde(default = "Duration::secs_300")]
    pub idle_timeout: Duration,
}

impl Default for Connect {
    fn default() -> Self {
        Self {
            allowed_ports: default_connect_ports(),
            idle_timeout: Duration::secs_300(),
        }
    }
}

fn default_connect_ports() -> Vec<u16> {
    vec![443]
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// A client must finish sending request headers within this time (slowloris
    /// guard). The clock starts when the connection waits for a request, so an
    /// idle keep-alive client connection is also closed after this long.
    #[serde(default = "Duration::secs_10")]
    pub header_read_timeout: Duration,
    /// Maximum size of the request head (request line plus headers).
    #[serde(default = "ByteSize::kib_64")]
    pub max_header_bytes: ByteSize,
    /// Maximum number of request headers.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// On SIGTERM/SIGINT, in-flight requests and tunnels get this long to finish.
    #[serde(default = "Duration::secs_30")]
    pub shutdown_grace: Duration,
    /// Maximum concurrent client connections; further connections wait in the accept backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::secs_10(),
            max_header_bytes: ByteSize::kib_64(),
            max_headers: default_max_headers(),
            shutdown_grace: Duration::secs_30(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_max_headers() -> usize {
    100
}
fn default_max_connections() -> usize {
    10_000
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// Where access-log lines go: `stdout`, `stderr`, `off`, or a file path.
    #[serde(default = "default_access_log")]
    pub access_log: String,
    /// Diagnostic log filter (tracing `EnvFilter` syntax); `TOLLGATE_LOG` overrides.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Query parameters whose values are replaced with `REDACTED` in logged paths.
    /// (The access log never records header values, so no header redaction is needed.)
    #[serde(default = "default_redact_query")]
    pub redact_query_params: Vec<String>,
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            access_log: default_access_log(),
            level: default_log_level(),
            redact_query_params: default_redact_query(),
        }
    }
}

fn default_access_log() -> String {
    "stdout".to_owned()
}
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_redact_query() -> Vec<String> {
    [
        "api_key",
        "apikey",
        "key",
        "token",
        "access_token",
        "secret",
        "password",
        "sig",
        "signature",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnknownConsumer {
    /// `deny` refuses callers no consumer matches (407 on the proxy, 401 on routes);
    /// `anonymous` lets them through as the consumer named `anonymous`.
    #[serde(default)]
    pub action: UnknownConsumerAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownConsumerAction {
    Deny,
    #[default]
    Anonymous,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// Unique name; appears in logs and metrics.
    pub name: String,
    /// How this consumer is recognised.
    pub identify: Identify,
    /// APIs this consumer may call (by name). Absent: every API.
    #[serde(default)]
    pub apis: Option<Vec<String>>,
    /// Whether this consumer may reach destinations no API matches (subject to `default_action`).
    #[serde(default = "yes")]
    pub allow_unmatched: bool,
}

/// Exactly one way of recognising a consumer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Identify {
    /// A trusted header set by the caller's platform (e.g. a sidecar).
    Header(HeaderIdentity),
    /// An API key: in `Proxy-Authorization` (Basic password or Bearer) or in a named header.
    ApiKey(ApiKeyIdentity),
    /// Source addresses of the connection.
    Source(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderIdentity {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyIdentity {
    /// The key, as a secret reference (`${env:NAME}` or `${file:/path}`).
    pub key: SecretRef,
    /// Header carrying the key. Absent: `Proxy-Authorization` (Basic password or Bearer token),
    /// then `Authorization: Bearer` on routes.
    #[serde(default)]
    pub header: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Unique name; appears in logs and metrics.
    pub name: String,
    /// Host names this API answers to: exact (`api.github.com`) or `*.suffix`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Route prefix (`/github`): `http://tollgate/github/x` is forwarded to `upstream` + `/x`.
    #[serde(default)]
    pub route: Option<String>,
    /// Upstream base URL for routes (`https://api.github.com`). Absent: `https://` + first host.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Allowed method/path rules. Empty: everything is allowed.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// `enforce` (default) or `report` (decide and log, never refuse).
    #[serde(default)]
    pub mode: Mode,
    /// CONNECT handling for this API's hosts.
    #[serde(default)]
    pub tls: TlsMode,
    /// Rate limits kept in this process; a request must pass all of them (429 otherwise).
    #[serde(default)]
    pub limits: Vec<Limit>,
}

/// One rate limit of an API: `requests` per `per`, counted per `by` key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Unique within the API; appears in `RateLimit` headers, errors and metrics.
    pub name: String,
    /// Requests allowed per `per` (at least 1).
    pub requests: u64,
    /// The window (`fixed`: exactly 1s, 1m, 1h or 1d) or, for `gcra`, the period `requests` refill over.
    pub per: Duration,
    /// `fixed` (default), `sliding` or `gcra`.
    #[serde(default)]
    pub algorithm: LimitAlgorithm,
    /// `gcra` only: how many requests may arrive at once. Absent: `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// What is counted separately: `api` (default), `consumer`, `endpoint` or `header:<name>`.
    #[serde(default)]
    pub by: LimitBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitAlgorithm {
    /// Windows aligned to UTC multiples of `per` since the Unix epoch.
    #[default]
    Fixed,
    /// A window of `per` sliding with time (weighted two-window estimate).
    Sliding,
    /// Token bucket (generic cell rate algorithm): `burst` at once, then `requests` per `per`.
    Gcra,
}

/// The key a limit counts by. Written as `api`, `consumer`, `endpoint` or `header:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LimitBy {
    /// One counter for the whole API.
    #[default]
    Api,
    /// One counter per consumer.
    Consumer,
    /// One counter per allow rule of the API.
    Endpoint,
    /// One counter per value of this request header (lower-case name).
    Header(String),
}

impl std::str::FromStr for LimitBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "api" => Ok(Self::Api),
            "consumer" => Ok(Self::Consumer),
            "endpoint" => Ok(Self::Endpoint),
            _ => match s.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                    Ok(Self::Header(name.to_ascii_lowercase()))
                }
                Some(name) => Err(format!("{name:?} is not a valid header name")),
                None => Err(format!(
                    "invalid key {s:?}: expected api, consumer, endpoint or header:<name>"
                )),
            },
        }
    }
}

impl std::fmt::Display for LimitBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Api => f.write_str("api"),
            Self::Consumer => f.write_str("consumer"),
            Self::Endpoint => f.write_str("endpoint"),
            Self::Header(h) => write!(f, "header:{h}"),
        }
    }
}

impl Serialize for LimitBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LimitBy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for LimitBy {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LimitBy".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(api|consumer|endpoint|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+)$",
            "description": "api, consumer, endpoint or header:<name>."
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Methods (`GET`, `POST`, …). Absent or empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path patterns: `*` one segment, `**` any number of segments, `{name}` one named segment.
    /// Absent or empty: any path.
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// L4 tunnel: host allowlist, byte counts, connection limits.
    #[default]
    Passthrough,
}
