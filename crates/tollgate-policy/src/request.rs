//! What the pipeline sees of a request: enough to identify the consumer,
//! match the API and decide access, borrowed from the proxy's parsed request.

use std::net::IpAddr;
use std::sync::Arc;

/// How the request reached Tollgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficKind {
    /// Absolute-form `GET http://host/path` from an `HTTP_PROXY` client.
    Forward,
    /// `CONNECT host:port` tunnel.
    Connect,
    /// Origin-form request to a configured route prefix.
    Route,
    /// A request inside an intercepted CONNECT tunnel (`tls: intercept`); the
    /// pipeline treats it as a forward-proxy request to `https://<connect host>`.
    Intercept,
}

impl TrafficKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Connect => "connect",
            Self::Route => "route",
            Self::Intercept => "intercept",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// A request as the pipeline sees it.
///
/// For `Forward` and `Connect`, `scheme`/`host`/`port` are the destination the
/// client asked for (host not yet normalised) and `path` is the request path
/// (empty for CONNECT). For `Route`, `host` is whatever the `Host` header said
/// (ignored for matching) and `path` is the full incoming path, route prefix included.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    pub kind: TrafficKind,
    pub method: &'a http::Method,
    pub scheme: Scheme,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    /// The query string without `?`, if any.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub peer: IpAddr,
    /// The client certificate verified on the TLS listener (`listen.proxy_tls`), if any.
    pub client_cert: Option<&'a ClientCert>,
}

/// What identify can match in a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// Subject common names (normally one).
    pub subject_cn: Vec<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs among them).
    pub uri: Vec<String>,
}

/// Where the request will go once the pipeline allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// Lower-case ASCII (IDN as punycode), no trailing dot, IPv6 without brackets.
    pub host: Arc<str>,
    pub port: u16,
    /// Path plus `?query` to send upstream (route prefix removed, upstream base path added).
    pub path_and_query: String,
}
