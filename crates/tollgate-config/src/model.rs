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
    /// Counter persistence (`dir`) and the shared Redis for `scope: global` limits.
    #[serde(default)]
    pub state: State,
    /// The interception CA for APIs with `tls: intercept` (required when any API intercepts).
    #[serde(default)]
    pub tls_intercept: Option<TlsIntercept>,
    /// API discovery: the endpoints Tollgate sees, managed or not (`GET /admin/discovery`,
    /// `tollgate discover`).
    #[serde(default)]
    pub discovery: Discovery,
    /// The response cache's memory bound (`apis[].cache` turns caching on per API).
    #[serde(default)]
    pub cache: crate::cache::CacheGlobal,
    /// OpenTelemetry trace export (`telemetry.tracing`); off when absent (docs/tracing.md).
    #[serde(default)]
    pub telemetry: crate::telemetry::Telemetry,
    /// Inbound caller authentication beyond API keys: trusted JWT issuers (docs/auth.md).
    #[serde(default)]
    pub auth: crate::auth::Auth,
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
    /// An additional proxy listener speaking TLS (HTTPS proxy and HTTPS routes), optionally
    /// authenticating clients by certificate. Absent: none.
    #[serde(default)]
    pub proxy_tls: Option<ProxyTls>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            proxy: default_proxy_addr(),
            admin: default_admin_addr(),
            proxy_tls: None,
        }
    }
}

/// The TLS proxy listener (`listen.proxy_tls`). Certificates, keys, client CA and CRLs are
/// re-read on every reload (and a change to a certificate or key file triggers one); the
/// address needs a restart.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyTls {
    /// Address of the TLS listener.
    pub addr: SocketAddr,
    /// Path of the default server certificate chain (PEM, leaf first): served when no entry of
    /// `certificates` matches the client's SNI name (or it sent none). Absent: such handshakes
    /// are refused (`certificates` must then be set).
    #[serde(default)]
    pub cert: Option<String>,
    /// The default certificate's private key (PEM): a path, `${file:/path}` or `${env:NAME}`.
    /// Goes with `cert`.
    #[serde(default)]
    pub key: Option<SecretRef>,
    /// Certificates chosen by the SNI host name: an exact name first, then a `*.` wildcard
    /// matching exactly one label, then the default `cert`.
    #[serde(default)]
    pub certificates: Vec<SniCertificate>,
    /// Path of the CA certificates (PEM) that client certificates must chain to. Required
    /// unless `client_auth` is `none`.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// Whether clients present a certificate: `none` (not asked), `optional` (verified when
    /// presented) or `required` (the handshake fails without one).
    #[serde(default)]
    pub client_auth: ClientCertAuth,
    /// Certificate revocation lists (PEM or DER files): a revoked client certificate fails
    /// the handshake.
    #[serde(default)]
    pub crls: Vec<String>,
}

/// One SNI certificate of `listen.proxy_tls.certificates`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// Host names served with this certificate: `api.example.com` (exact, case-insensitive) or
    /// `*.example.org` (one label: `a.example.org`, not `example.org` nor `a.b.example.org`).
    pub hosts: Vec<String>,
    /// Path of the certificate chain (PEM, leaf first).
    pub cert: String,
    /// The private key (PEM): a path, `${file:/path}` or `${env:NAME}`.
    pub key: SecretRef,
}

/// Client-certificate authentication on `listen.proxy_tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertAuth {
    #[default]
    None,
    Optional,
    Required,
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
    /// Header rules for this consumer's requests and responses (applied after the API's).
    #[serde(default)]
    pub headers: crate::outbound::HeaderRules,
    /// Data-loss protection for this consumer's requests: replaces the `dlp` of every API it
    /// calls. Absent: the API's applies.
    #[serde(default)]
    pub dlp: Option<crate::dlp::Dlp>,
    /// Body size limits for this consumer: the stricter of these and the API's apply.
    #[serde(default)]
    pub body_limits: Option<crate::dlp::BodyLimits>,
    /// Queue priority: when requests wait for a limit with `on_limit: { queue }` or for a
    /// concurrency slot, higher priorities are released first. Default 0.
    #[serde(default)]
    pub priority: i32,
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
    /// The verified client certificate on `listen.proxy_tls` (exactly one field, exact match).
    ClientCert(ClientCertIdentity),
    /// A JWT bearer token on routes from an `auth.jwt` issuer (docs/auth.md).
    Jwt(crate::auth::JwtIdentity),
}

/// Matches a verified client certificate; set exactly one field.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertIdentity {
    /// The subject's common name (exact, case-sensitive).
    #[serde(default)]
    pub subject_cn: Option<String>,
    /// A DNS subject alternative name (exact, ASCII case-insensitive).
    #[serde(default)]
    pub dns: Option<String>,
    /// A URI subject alternative name, e.g. a SPIFFE ID `spiffe://example.org/ns/app` (exact).
    #[serde(default)]
    pub uri: Option<String>,
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
    /// The key, as a secret reference (`${env:NAME}` or `${file:/path}`). Set exactly one of
    /// `key` and `key_sha256`.
    #[serde(default)]
    pub key: Option<SecretRef>,
    /// The SHA-256 of the key as 64 hex digits, so the key itself is stored nowhere in the
    /// configuration (docs/auth.md).
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Header carrying the key. Absent (and no `query`): `Proxy-Authorization` (Basic password
    /// or Bearer token), then `Authorization: Bearer` on routes.
    #[serde(default)]
    pub header: Option<String>,
    /// Query parameter carrying the key (`?api_key=…`) instead of a header. Removed before
    /// forwarding and redacted in access logs.
    #[serde(default)]
    pub query: Option<String>,
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
    /// Several backends for a route instead of one `upstream` URL: load balancing, health
    /// checks and passive ejection (docs/upstream-groups.md).
    #[serde(default)]
    pub upstream_group: Option<crate::upstreams::UpstreamGroup>,
    /// CORS for the route: preflights answered at the gateway, `Access-Control-*` on responses
    /// (docs/upstream-groups.md#cors). Absent: no CORS handling (requests pass as they are).
    #[serde(default)]
    pub cors: Option<crate::cors::Cors>,
    /// Allowed method/path rules. Empty: everything is allowed.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// `enforce` (default) or `report` (decide and log, never refuse).
    #[serde(default)]
    pub mode: Mode,
    /// CONNECT handling for this API's hosts.
    #[serde(default)]
    pub tls: TlsMode,
    /// Rate limits and quotas; a request must pass all of them (429 otherwise).
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Retries of failed upstream attempts. Absent: each request is tried once.
    #[serde(default)]
    pub retry: Option<crate::resilience::Retry>,
    /// Circuit breaker: answer 503 `circuit_open` while the upstream keeps failing. Absent: none.
    #[serde(default)]
    pub breaker: Option<crate::resilience::Breaker>,
    /// Stop sending while the provider says its quota is exhausted (on by default).
    #[serde(default)]
    pub provider_backoff: crate::resilience::ProviderBackoff,
    /// In-flight request limits (`{ max: 10, per_consumer: 2, on_limit: reject }`). Absent: none.
    #[serde(default)]
    pub concurrency: Option<crate::traffic::Concurrency>,
    /// Credentials injected into every upstream request (the caller never holds the key).
    #[serde(default)]
    pub credentials: Option<crate::outbound::Credentials>,
    /// Header rules for this API's upstream requests and responses (applied before the consumer's).
    #[serde(default)]
    pub headers: crate::outbound::HeaderRules,
    /// Data-loss protection: scan request (and optionally response) bodies for card numbers,
    /// IBANs, keys and custom patterns; block, redact or report. Absent: bodies are not scanned.
    #[serde(default)]
    pub dlp: Option<crate::dlp::Dlp>,
    /// Body size limits (`{ request: 10MiB, response: 100MiB }`). Absent: none.
    #[serde(default)]
    pub body_limits: Option<crate::dlp::BodyLimits>,
    /// Shared HTTP response cache for `GET`/`HEAD` (RFC 9111; `{ ttl: 60s, max_entry: 1MiB }`).
    /// Absent: responses are not cached.
    #[serde(default)]
    pub cache: Option<crate::cache::ApiCache>,
}

/// One rate limit of an API: `requests` per `per`, counted per `by` key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Unique within the API; appears in `RateLimit` headers, errors and metrics.
    pub name: String,
    /// Requests allowed per `per` (at least 1).
    pub requests: u64,
    /// The window (`fixed`: exactly 1s, 1m, 1h, 1d or `month`) or, for `gcra`, the period
    /// `requests` refill over.
    pub per: Per,
    /// `fixed` (default), `sliding` or `gcra`.
    #[serde(default)]
    pub algorithm: LimitAlgorithm,
    /// `gcra` only: how many requests may arrive at once. Absent: `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// What is counted separately: `api` (default), `consumer`, `endpoint` or `header:<name>`.
    #[serde(default)]
    pub by: LimitBy,
    /// `local` (default): counted in this process. `global`: shared by every gateway through
    /// `state.redis`.
    #[serde(default)]
    pub scope: LimitScope,
    /// `global` limits only: what happens when Redis does not answer in time. `open` (default):
    /// decide locally at this instance's fair share of the limit. `closed`: refuse with 503
    /// `limit_store_unavailable`.
    #[serde(default)]
    pub on_store_failure: OnStoreFailure,
    /// Calendar windows only (`per: 1d` with `algorithm: fixed`, and `per: month`): the time
    /// zone the day or month is counted in, an IANA name (`Europe/Berlin`, following its
    /// daylight-saving changes) or a fixed UTC offset (`+02:00`, `-05:30`). Absent: UTC.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// `per: month` only: the day of the month (1..31) the quota renews at 00:00 local time; in
    /// shorter months, their last day. Absent: 1.
    #[serde(default)]
    pub renewal_day: Option<u8>,
    /// What one request costs. Absent: 1 per request.
    #[serde(default)]
    pub cost: Option<LimitCost>,
    /// Guaranteed shares of this limit by consumer (`{ acme: 25%, others: 50% }`); fixed and
    /// sliding windows only. Absent: one counter for everybody the key covers.
    #[serde(default)]
    pub shares: Option<crate::traffic::Shares>,
    /// With `shares`: what a consumer may use beyond its guarantee. `true` (default): capacity
    /// no guarantee covers plus the unused guarantees of idle consumers (not charged or refused
    /// in this window or the previous one); `unallocated`: only capacity no guarantee covers;
    /// `false`: nothing.
    #[serde(default)]
    pub borrow: Option<crate::traffic::Borrow>,
    /// With `shares`: the share consumers not listed get together (`10%`), or `deny`.
    /// Default 0% (they may only borrow).
    #[serde(default)]
    pub default_share: Option<crate::traffic::DefaultShare>,
    /// When the limit is exhausted: `reject` (default, 429 at once) or
    /// `{ queue: 5s, max_queue: 100 }` (wait in priority order).
    #[serde(default)]
    pub on_limit: crate::traffic::OnLimit,
}

/// A limit's window length: a duration, or `month` (a calendar month, see `time_zone` and
/// `renewal_day`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Every(Duration),
    Month,
}

impl Per {
    /// The length; a month counts as 31 days here (callers that align to the calendar check
    /// [`Per::is_month`]).
    pub fn get(self) -> std::time::Duration {
        match self {
            Self::Every(d) => d.get(),
            Self::Month => std::time::Duration::from_secs(31 * 86_400),
        }
    }
    pub fn is_month(self) -> bool {
        matches!(self, Self::Month)
    }
}

impl std::fmt::Display for Per {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Every(d) => d.fmt(f),
            Self::Month => f.write_str("month"),
        }
    }
}

impl Serialize for Per {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Per {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "month" {
            return Ok(Self::Month);
        }
        s.parse().map(Self::Every).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Per {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LimitPer".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d)|month)$",
            "description": "A duration such as 1s, 1m, 1h or 1d, or `month`."
        })
    }
}

/// Parses a fixed UTC offset (`+02:00`, `-0530`, `+2`, `Z` or `UTC`) into minutes east of UTC.
pub fn parse_utc_offset(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        return Ok(0);
    }
    let bad =
        || format!("invalid time zone {s:?}: expected a fixed UTC offset such as +02:00 or -05:30");
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None => (rest, "0"),
    };
    let all_digits =
        |x: &str| !x.is_empty() && x.len() <= 2 && x.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(h) || !all_digits(m) {
        return Err(bad());
    }
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

/// Where a limit's counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// In this process (persisted under `state.dir` for windows of an hour or longer).
    #[default]
    Local,
    /// In Redis (`state.redis`), shared by every gateway using the same `prefix`.
    Global,
}

/// What a `global` limit does when Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreFailure {
    /// Enforce locally at this instance's fair share (limit / live instances).
    #[default]
    Open,
    /// Refuse with 503 `limit_store_unavailable`.
    Closed,
}

/// What a request costs against a limit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitCost {
    /// Read the cost from this request header (a whole number). Missing, invalid or below 1:
    /// 1. Capped at the limit's quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Charge the bytes of the response body, counted while it streams to the client and
    /// charged when it ends (to cap how much data a consumer can pull).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub response_bytes: bool,
    /// Charge the whole number at this dotted path of the response JSON (e.g.
    /// `usage.total_tokens`), read when the response body ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_json: Option<String>,
    /// `response_json` only: the charge when the response is not JSON, is larger than 1 MiB
    /// or lacks the field. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<u64>,
    /// `response_bytes` / `response_json` only: units charged at admission (the request goes
    /// ahead only when they fit); the response's cost beyond them is charged when it ends.
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<u64>,
}

/// Where counters live besides this process' memory.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Directory for persisted local counters (windows of an hour or longer), saved every 10 s
    /// and at shutdown, loaded at start. Absent: local counters are not persisted.
    #[serde(default)]
    pub dir: Option<String>,
    /// Redis for `scope: global` limits.
    #[serde(default)]
    pub redis: Option<RedisState>,
}

/// API discovery: which endpoints (host, method, normalised path) traffic reaches, with counts,
/// statuses, latency, consumers and the provider's rate-limit headers. Kept in memory, bounded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// Record endpoints. Default true (recording is one hash lookup under a sharded lock).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most hosts recorded; requests to further hosts are counted in the overflow bucket.
    /// Default 200.
    #[serde(default = "default_discovery_bound")]
    pub max_hosts: usize,
    /// Most endpoints (method + path pattern) recorded per host; further ones are counted in
    /// the host's overflow bucket. Default 200.
    #[serde(default = "default_discovery_bound")]
    pub max_endpoints_per_host: usize,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            enabled: true,
            max_hosts: default_discovery_bound(),
            max_endpoints_per_host: default_discovery_bound(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_discovery_bound() -> usize {
    200
}

/// Connection to the Redis that holds `global` limit counters. Exactly one of `url` (one
/// server, plain or TLS), `sentinel` or `cluster`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisState {
    /// One server: `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS (may embed
    /// a password, so write it as a secret reference such as `${env:REDIS_URL}`).
    #[serde(default)]
    pub url: Option<SecretRef>,
    /// A master found through Redis Sentinel (failover followed automatically).
    #[serde(default)]
    pub sentinel: Option<RedisSentinel>,
    /// A Redis Cluster, discovered from seed nodes.
    #[serde(default)]
    pub cluster: Option<RedisCluster>,
    /// TLS to every Redis connection (sentinels and cluster nodes included). With `url` it
    /// needs `rediss://`; `rediss://` without it uses the system's roots.
    #[serde(default)]
    pub tls: Option<RedisTls>,
    /// ACL user of the data nodes (overrides a user in `url`).
    #[serde(default)]
    pub username: Option<SecretRef>,
    /// Password of the data nodes (overrides a password in `url`).
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Upper bound for one decision, connect included. Default 50ms.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
    /// Key prefix (the first part of every key's hash tag). Default `tollgate`.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
}

/// `state.redis.sentinel`: where the sentinels are and which master they watch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSentinel {
    /// The master's name as the sentinels know it (`sentinel monitor <name> …`).
    pub master: String,
    /// Sentinel addresses, `host:port`, asked in order.
    pub nodes: Vec<String>,
    /// ACL user of the sentinels themselves (not of the master).
    #[serde(default)]
    pub username: Option<SecretRef>,
    /// Password of the sentinels themselves (`requirepass` of the sentinel).
    #[serde(default)]
    pub password: Option<SecretRef>,
}

/// `state.redis.cluster`: seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisCluster {
    /// Some of the cluster's nodes, `host:port`; the rest is discovered.
    pub nodes: Vec<String>,
}

/// `state.redis.tls`: how Tollgate verifies Redis and proves itself to it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// PEM file of the CA(s) that sign the Redis servers' certificates (a private CA).
    /// Absent: the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate chain, for servers that require client certificates (mTLS).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_redis_prefix() -> String {
    "tollgate".to_owned()
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
    /// Terminate the client's TLS with a certificate minted by the `tls_intercept` CA and run
    /// every request inside the tunnel through the full pipeline.
    Intercept,
}

/// The interception CA (`tollgate ca init` writes one) and how leaf certificates are minted.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsIntercept {
    /// Path of the CA certificate (PEM) that clients trust.
    pub ca_cert: String,
    /// The CA private key (PEM): a path, `${file:/path}` or `${env:NAME}`.
    pub ca_key: SecretRef,
    /// Validity of each minted leaf certificate; it is re-minted when half of it has passed.
    #[serde(default = "default_leaf_ttl")]
    pub leaf_ttl: Duration,
    /// How many minted leaf certificates are kept (one per host); the oldest is dropped beyond it.
    #[serde(default = "default_leaf_cache")]
    pub leaf_cache: usize,
}

fn default_leaf_ttl() -> Duration {
    Duration::from_millis(24 * 3600 * 1000)
}

fn default_leaf_cache() -> usize {
    1000
}
