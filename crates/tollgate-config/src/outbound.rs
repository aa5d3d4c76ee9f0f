//! Configuration types for what Tollgate adds to or removes from traffic it
//! forwards: injected credentials (`apis[].credentials`) and header rules
//! (`apis[].headers`, `consumers[].headers`). Shape checks that need more
//! than serde (exactly one credential kind, forbidden header names, template
//! placeholders) and secret resolution happen when `tollgate-policy` compiles
//! the configuration, with key paths.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::{SecretRef, SecretTemplate};
use crate::units::Duration;

fn yes() -> bool {
    true
}

/// Credentials Tollgate injects into every upstream request of an API, so the
/// caller never holds the key. Exactly one of: `header` + `value`, `query` +
/// `value`, `basic`, `oauth2`, or `keys` (several accounts).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Header to set on the upstream request (e.g. `Authorization`); needs `value`.
    #[serde(default)]
    pub header: Option<String>,
    /// Query parameter to set on the upstream request (e.g. `api_key`); needs `value`.
    #[serde(default)]
    pub query: Option<String>,
    /// The header or parameter value: a template whose `${env:NAME}` / `${file:/path}`
    /// references are replaced by the secret (`"Bearer ${env:GITHUB_TOKEN}"`).
    #[serde(default)]
    pub value: Option<SecretTemplate>,
    /// HTTP Basic authentication (`Authorization: Basic …`).
    #[serde(default)]
    pub basic: Option<BasicCredentials>,
    /// An OAuth 2.0 client-credentials token fetched and refreshed by Tollgate.
    #[serde(default)]
    pub oauth2: Option<OAuth2Credentials>,
    /// Several named keys (accounts); each request uses one, picked by `rotation`.
    #[serde(default)]
    pub keys: Vec<CredentialKey>,
    /// How a key is picked from `keys`: `round_robin` (default) or `least_used`.
    #[serde(default)]
    pub rotation: Rotation,
    /// Remove credentials the caller sent before injecting: the injected header or query
    /// parameter, `Authorization` and `Proxy-Authorization`. Default true. When false, only
    /// the injected header/parameter is replaced.
    #[serde(default = "yes")]
    pub strip_caller_credentials: bool,
    /// Also inject over plain `http://` to hosts other than loopback. Default false: such
    /// requests are refused (403) instead of sending the key in clear text.
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// One named key of `credentials.keys`: exactly one of `header` + `value`, `query` +
/// `value`, `basic` or `oauth2`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialKey {
    /// Unique within the API; appears in the access log (`credential`) and metrics, never the value.
    pub name: String,
    /// Header to set; needs `value`.
    #[serde(default)]
    pub header: Option<String>,
    /// Query parameter to set; needs `value`.
    #[serde(default)]
    pub query: Option<String>,
    /// The header or parameter value (a template with secret references).
    #[serde(default)]
    pub value: Option<SecretTemplate>,
    /// HTTP Basic authentication.
    #[serde(default)]
    pub basic: Option<BasicCredentials>,
    /// An OAuth 2.0 client-credentials token.
    #[serde(default)]
    pub oauth2: Option<OAuth2Credentials>,
    /// This key's own rate limits and quotas (the provider's per-account quota), same syntax
    /// as `apis[].limits` (`scope: local` or `global`). A key whose limit is exhausted is
    /// skipped like a key in back-off; when every key is exhausted the request is answered
    /// 429. Not allowed here: `on_limit: queue`, `shares` and response-based `cost`.
    #[serde(default)]
    pub limits: Vec<crate::Limit>,
}

/// How one key of several is picked for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    /// Each key in turn.
    #[default]
    RoundRobin,
    /// The key used least often since the configuration was loaded (ties: the first).
    LeastUsed,
}

/// `Authorization: Basic base64(username:password)`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentials {
    /// The user name (a template; may hold a secret reference, e.g. an API key used as user).
    pub username: SecretTemplate,
    /// The password (a template with secret references; may be empty).
    #[serde(default = "empty_template")]
    pub password: SecretTemplate,
}

fn empty_template() -> SecretTemplate {
    SecretTemplate::empty()
}

/// The OAuth 2.0 client-credentials grant (RFC 6749 §4.4): Tollgate POSTs a form to
/// `token_url`, caches the access token until `expires_in - refresh_before`, and sends
/// `Authorization: Bearer <token>` upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Credentials {
    /// The token endpoint (`https://auth.example.com/oauth/token`). Reached through the
    /// network guard like any upstream.
    pub token_url: String,
    /// The client identifier.
    pub client_id: String,
    /// The client secret (a secret reference).
    pub client_secret: SecretRef,
    /// Scopes to request (sent space-separated as `scope`). Empty: no `scope` parameter.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Sent as the `audience` parameter when set (Auth0 and similar).
    #[serde(default)]
    pub audience: Option<String>,
    /// Refresh this long before the token expires.
    #[serde(default = "Duration::secs_30")]
    pub refresh_before: Duration,
    /// How the client authenticates: `basic` (default, RFC 6749 §2.3.1) or `body`
    /// (`client_id` and `client_secret` form fields).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Time allowed for one token request.
    #[serde(default = "Duration::secs_10")]
    pub timeout: Duration,
}

/// Where the OAuth client credentials go in the token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-encoded id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// Header rules: `request` rules change what goes upstream, `response` rules change what
/// goes back to the client. Values may use `{consumer}`, `{request_id}` and `{api}`
/// (`{{` and `}}` for literal braces).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Rules for the upstream request.
    #[serde(default)]
    pub request: HeaderOps,
    /// Rules for the upstream's response.
    #[serde(default)]
    pub response: HeaderOps,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// One direction's rules, applied in this order: `remove`, then `set`, then `append`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers to set, replacing any existing values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to add, keeping existing values.
    #[serde(default)]
    pub append: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.append.is_empty() && self.remove.is_empty()
    }
}
