//! The catalogue of gateway-generated errors. Every response Tollgate makes
//! itself comes from a [`GatewayError`]: a stable code (sent as the
//! `tollgate-error` header and in the problem+json body), an HTTP status, where
//! the fault lies and whether a retry is safe. This file is the one place that
//! maps errors to statuses; `tollgate-proxy::respond` renders them.

use std::borrow::Cow;

use crate::request::TrafficKind;

/// Where the fault lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself is malformed or unauthenticated.
    Client,
    /// A policy decided to refuse it.
    Policy,
    /// The upstream (or the way to it) failed.
    Upstream,
    /// Tollgate itself failed or is shutting down.
    Gateway,
}

/// Stable error codes. The string forms are part of the public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    AmbiguousFraming,
    HeadersTooLarge,
    ConsumerUnidentified,
    ConsumerNotAllowed,
    DestinationNotAllowed,
    EndpointNotAllowed,
    EmergencyStop,
    PortNotAllowed,
    DestinationBlocked,
    RateLimited,
    ConcurrencyLimited,
    LimitStoreUnavailable,
    CircuitOpen,
    NoHealthyUpstream,
    CorsNotAllowed,
    ProviderBackoff,
    CredentialUnavailable,
    DlpBlocked,
    RequestTooLarge,
    ResponseTooLarge,
    RouteNotFound,
    DnsFailure,
    UpstreamConnectFailed,
    UpstreamTlsFailed,
    UpstreamTimeout,
    UpstreamProtocolError,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 29] = [
        Self::BadRequest,
        Self::AmbiguousFraming,
        Self::HeadersTooLarge,
        Self::ConsumerUnidentified,
        Self::ConsumerNotAllowed,
        Self::DestinationNotAllowed,
        Self::EndpointNotAllowed,
        Self::EmergencyStop,
        Self::PortNotAllowed,
        Self::DestinationBlocked,
        Self::RateLimited,
        Self::ConcurrencyLimited,
        Self::LimitStoreUnavailable,
        Self::CircuitOpen,
        Self::NoHealthyUpstream,
        Self::CorsNotAllowed,
        Self::ProviderBackoff,
        Self::CredentialUnavailable,
        Self::DlpBlocked,
        Self::RequestTooLarge,
        Self::ResponseTooLarge,
        Self::RouteNotFound,
        Self::DnsFailure,
        Self::UpstreamConnectFailed,
        Self::UpstreamTlsFailed,
        Self::UpstreamTimeout,
        Self::UpstreamProtocolError,
        Self::ShuttingDown,
        Self::Internal,
    ];

    /// The stable code sent in `tollgate-error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::AmbiguousFraming => "ambiguous_framing",
            Self::HeadersTooLarge => "headers_too_large",
            Self::ConsumerUnidentified => "consumer_unidentified",
            Self::ConsumerNotAllowed => "consumer_not_allowed",
            Self::DestinationNotAllowed => "destination_not_allowed",
            Self::EndpointNotAllowed => "endpoint_not_allowed",
            Self::EmergencyStop => "emergency_stop",
            Self::PortNotAllowed => "port_not_allowed",
            Self::DestinationBlocked => "destination_blocked",
            Self::RateLimited => "rate_limited",
            Self::ConcurrencyLimited => "concurrency_limited",
            Self::LimitStoreUnavailable => "limit_store_unavailable",
            Self::CircuitOpen => "circuit_open",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::CorsNotAllowed => "cors_not_allowed",
            Self::ProviderBackoff => "provider_backoff",
            Self::CredentialUnavailable => "credential_unavailable",
            Self::DlpBlocked => "dlp_blocked",
            Self::RequestTooLarge => "request_too_large",
            Self::ResponseTooLarge => "response_too_large",
            Self::RouteNotFound => "route_not_found",
            Self::DnsFailure => "dns_failure",
            Self::UpstreamConnectFailed => "upstream_connect_failed",
            Self::UpstreamTlsFailed => "upstream_tls_failed",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamProtocolError => "upstream_protocol_error",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal_error",
        }
    }

    /// The HTTP status for this code. Identification failures answer 407 on the
    /// proxy (so clients send `Proxy-Authorization`) and 401 on routes.
    pub fn status(self, kind: TrafficKind) -> u16 {
        match self {
            Self::BadRequest | Self::AmbiguousFraming => 400,
            Self::HeadersTooLarge => 431,
            Self::ConsumerUnidentified => match kind {
                TrafficKind::Route => 401,
                TrafficKind::Forward | TrafficKind::Connect | TrafficKind::Intercept => 407,
            },
            Self::ConsumerNotAllowed
            | Self::DestinationNotAllowed
            | Self::EndpointNotAllowed
            | Self::EmergencyStop
            | Self::PortNotAllowed
            | Self::DestinationBlocked
            | Self::DlpBlocked
            | Self::CorsNotAllowed => 403,
            Self::RequestTooLarge => 413,
            Self::ResponseTooLarge => 502,
            Self::RateLimited | Self::ConcurrencyLimited | Self::ProviderBackoff => 429,
            Self::CircuitOpen
            | Self::NoHealthyUpstream
            | Self::LimitStoreUnavailable
            | Self::CredentialUnavailable => 503,
            Self::RouteNotFound => 404,
            Self::DnsFailure
            | Self::UpstreamConnectFailed
            | Self::UpstreamTlsFailed
            | Self::UpstreamProtocolError => 502,
            Self::UpstreamTimeout => 504,
            Self::ShuttingDown => 503,
            Self::Internal => 500,
        }
    }

    /// A short human title for the problem+json body.
    pub fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Malformed request",
            Self::AmbiguousFraming => "Ambiguous message framing",
            Self::HeadersTooLarge => "Request headers too large",
            Self::ConsumerUnidentified => "Caller not identified",
            Self::ConsumerNotAllowed => "Consumer may not call this API",
            Self::DestinationNotAllowed => "Destination not allowed",
            Self::EndpointNotAllowed => "Endpoint not allowed",
            Self::EmergencyStop => "Traffic stopped by an operator",
            Self::PortNotAllowed => "Port not allowed for CONNECT",
            Self::DestinationBlocked => "Destination address blocked by the network guard",
            Self::RateLimited => "Rate limit exceeded",
            Self::ConcurrencyLimited => "Too many requests in flight",
            Self::LimitStoreUnavailable => "Shared rate-limit store unavailable",
            Self::CircuitOpen => "Circuit breaker open: the upstream keeps failing",
            Self::NoHealthyUpstream => "No healthy target in the upstream group",
            Self::CorsNotAllowed => "CORS preflight refused for this origin, method or headers",
            Self::ProviderBackoff => "The provider's own rate limit is exhausted",
            Self::CredentialUnavailable => "Credentials for the upstream could not be obtained",
            Self::DlpBlocked => "Sensitive data blocked by data-loss protection",
            Self::RequestTooLarge => "Request body larger than the API allows",
            Self::ResponseTooLarge => "Upstream response larger than the API allows",
            Self::RouteNotFound => "No route matches this path",
            Self::DnsFailure => "Upstream host name could not be resolved",
            Self::UpstreamConnectFailed => "Could not connect to the upstream",
            Self::UpstreamTlsFailed => "TLS with the upstream failed",
            Self::UpstreamTimeout => "The upstream did not answer in time",
            Self::UpstreamProtocolError => "The upstream sent an invalid response",
            Self::ShuttingDown => "Gateway is shutting down",
            Self::Internal => "Internal gateway error",
        }
    }

    pub fn fault(self) -> Fault {
        match self {
            Self::BadRequest
            | Self::AmbiguousFraming
            | Self::HeadersTooLarge
            | Self::ConsumerUnidentified
            | Self::RouteNotFound => Fault::Client,
            Self::ConsumerNotAllowed
            | Self::DestinationNotAllowed
            | Self::EndpointNotAllowed
            | Self::EmergencyStop
            | Self::PortNotAllowed
            | Self::DestinationBlocked
            | Self::RateLimited
            | Self::ConcurrencyLimited
            | Self::DlpBlocked
            | Self::CorsNotAllowed
            | Self::RequestTooLarge
            | Self::ResponseTooLarge => Fault::Policy,
            Self::DnsFailure
            | Self::UpstreamConnectFailed
            | Self::UpstreamTlsFailed
            | Self::UpstreamTimeout
            | Self::UpstreamProtocolError
            | Self::CircuitOpen
            | Self::NoHealthyUpstream
            | Self::ProviderBackoff
            | Self::CredentialUnavailable => Fault::Upstream,
            Self::ShuttingDown | Self::Internal | Self::LimitStoreUnavailable => Fault::Gateway,
        }
    }

    /// Whether the client may safely retry the same request: true when the
    /// request provably did not reach the upstream.
    pub fn retry_safe(self) -> bool {
        matches!(
            self,
            Self::DnsFailure
                | Self::UpstreamConnectFailed
                | Self::UpstreamTlsFailed
                | Self::ShuttingDown
                | Self::LimitStoreUnavailable
                | Self::CircuitOpen
                | Self::NoHealthyUpstream
                | Self::ProviderBackoff
                | Self::CredentialUnavailable
        )
    }
}

/// A gateway-generated error: a code plus a detail sentence safe to show the
/// client (never a secret, never a credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub code: ErrorCode,
    pub detail: Cow<'static, str>,
}

impl GatewayError {
    pub fn new(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for GatewayError {}
