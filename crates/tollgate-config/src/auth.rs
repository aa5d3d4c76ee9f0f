//! Consumer authentication settings (docs/auth.md): JWT bearer tokens checked
//! against a JWKS, and helpers over API-key settings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{Config, Identify};
use crate::units::Duration;

/// `auth:`: how inbound callers of routes prove who they are, beyond API keys.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Trusted JWT issuers. A consumer names one with `identify: { jwt: { issuer, value } }`.
    #[serde(default)]
    pub jwt: Vec<JwtIssuer>,
}

/// One trusted token issuer and where its signing keys are published.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    /// Unique name consumers refer to; appears in logs.
    pub name: String,
    /// The exact `iss` claim tokens must carry.
    pub issuer: String,
    /// URL of the JWKS (`http://` or `https://`). Fetched through the network guard: a JWKS on a
    /// private or loopback address needs a `network_guard.allow` entry.
    pub jwks_url: String,
    /// Accepted `aud` values; a token must name at least one. Required.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (`RS256`, `ES256`, `EdDSA`). Never `none` or HMAC.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Allowed clock skew for `exp` and `nbf`.
    #[serde(default = "Duration::secs_30")]
    pub leeway: Duration,
    /// The claim whose (string) value names the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// How often the JWKS is fetched again.
    #[serde(default = "Duration::secs_300")]
    pub refresh: Duration,
    /// Least time between two fetches caused by tokens with an unknown key id.
    #[serde(default = "Duration::secs_10")]
    pub min_refetch_interval: Duration,
}

/// A JWS signature algorithm Tollgate verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (2048-bit keys or larger).
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    vec![
        JwtAlgorithm::RS256,
        JwtAlgorithm::ES256,
        JwtAlgorithm::EdDSA,
    ]
}

fn default_consumer_claim() -> String {
    "sub".to_owned()
}

/// `identify: { jwt: … }`: a consumer is the caller whose valid token from `issuer` carries
/// `value` in the issuer's `consumer_claim`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtIdentity {
    /// Name of an entry of `auth.jwt`.
    pub issuer: String,
    /// The claim value (e.g. the `sub` of the client's service account).
    pub value: String,
}

impl Config {
    /// Names of the query parameters that carry API keys (`api_key.query`), so
    /// access logs redact them like `logging.redact_query_params`.
    pub fn api_key_query_params(&self) -> impl Iterator<Item = &str> + '_ {
        self.consumers.iter().filter_map(|c| match &c.identify {
            Identify::ApiKey(k) => k.query.as_deref(),
            _ => None,
        })
    }
}
