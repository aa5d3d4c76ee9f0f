//! CORS per route API (`apis[].cors`): which browser origins may call the route, answered at
//! the gateway. The behaviour lives in `tollgate-proxy` (`cors.rs`); [`problems`] holds the
//! cross-field rules (called from `validate.rs`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// Cross-origin resource sharing for a route API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed to call (`https://app.example.com`), or `"*"` for any origin.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for.
    #[serde(default = "default_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive), or `"*"` for any.
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// Response headers the browser may expose to the calling script.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (cookies, `Authorization`). Not with `"*"`.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`).
    #[serde(default)]
    pub max_age: Option<Duration>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(str::to_owned).to_vec()
}

/// Cross-field problems, as (key path below `cors`, message).
pub fn problems(c: &Cors) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if c.allowed_origins.is_empty() {
        out.push((
            "allowed_origins".to_owned(),
            "list at least one origin, or \"*\"".to_owned(),
        ));
    }
    for (i, o) in c.allowed_origins.iter().enumerate() {
        if o == "*" {
            if c.allow_credentials {
                out.push((
                    format!("allowed_origins[{i}]"),
                    "\"*\" cannot be combined with `allow_credentials: true`; list the origins"
                        .to_owned(),
                ));
            }
            continue;
        }
        let ok = o.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && u.path_and_query().is_none_or(|p| p.as_str() == "/")
                && !o.ends_with('/')
        });
        if !ok {
            out.push((
                format!("allowed_origins[{i}]"),
                format!("{o:?}: expected an origin such as https://app.example.com (no path)"),
            ));
        }
    }
    for (i, m) in c.allowed_methods.iter().enumerate() {
        if http::Method::from_bytes(m.as_bytes()).is_err() {
            out.push((
                format!("allowed_methods[{i}]"),
                format!("{m:?} is not a method"),
            ));
        }
    }
    for (key, list) in [
        ("allowed_headers", &c.allowed_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            let wildcard = h == "*" && key == "allowed_headers";
            if !wildcard && http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                out.push((format!("{key}[{i}]"), format!("{h:?} is not a header name")));
            }
        }
    }
    out
}
