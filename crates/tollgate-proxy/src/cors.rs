//! CORS for route APIs (`apis[].cors`), answered at the gateway.
//!
//! A route request with an `Origin` header is matched to its API by route prefix (longest first,
//! at a segment boundary, as the resolve stage does). Then:
//! - a **preflight** (`OPTIONS` with `Access-Control-Request-Method`) is answered here, before
//!   consumer identification (browsers send no credentials on preflights): `204` with
//!   `Access-Control-Allow-Origin`, `-Methods`, `-Headers`, `-Credentials`, `-Max-Age` and
//!   `Vary: Origin` when the origin, the method and every requested header are allowed;
//!   otherwise `403 cors_not_allowed` without any `Access-Control-*` header. It never reaches
//!   the upstream and takes no rate-limit quota.
//! - every other response for an allowed origin (upstream, cached or gateway-generated) gets
//!   `Access-Control-Allow-Origin`, `-Credentials`, `-Expose-Headers` and `Vary: Origin`. A
//!   disallowed origin gets no CORS headers (the browser then blocks the response).

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, VARY};
use http::{Method, Response, StatusCode};
use tollgate_config::cors::Cors;
use tollgate_policy::{ErrorCode, GatewayError};

use crate::body::ProxyBody;
use crate::observe::Completion;

const ACAO: HeaderName = HeaderName::from_static("access-control-allow-origin");
const ACAC: HeaderName = HeaderName::from_static("access-control-allow-credentials");
const ACAM: HeaderName = HeaderName::from_static("access-control-allow-methods");
const ACAH: HeaderName = HeaderName::from_static("access-control-allow-headers");
const ACMA: HeaderName = HeaderName::from_static("access-control-max-age");
const ACEH: HeaderName = HeaderName::from_static("access-control-expose-headers");
const ACRM: HeaderName = HeaderName::from_static("access-control-request-method");
const ACRH: HeaderName = HeaderName::from_static("access-control-request-headers");

/// One API's compiled CORS policy.
struct Policy {
    /// Without trailing slash; empty for the catch-all route `/`.
    prefix: Box<str>,
    any_origin: bool,
    origins: Vec<String>,
    methods: Vec<Method>,
    methods_value: Option<HeaderValue>,
    any_header: bool,
    headers: Vec<String>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// The CORS policies of one configuration, longest route prefix first.
#[derive(Default)]
pub struct CorsTable {
    routes: Vec<Arc<Policy>>,
}

fn join(items: impl Iterator<Item = String>) -> Option<HeaderValue> {
    let s = items.collect::<Vec<_>>().join(", ");
    if s.is_empty() {
        None
    } else {
        HeaderValue::from_str(&s).ok()
    }
}

impl CorsTable {
    pub fn build(cfg: &tollgate_config::Config) -> Self {
        let mut routes = Vec::new();
        for api in &cfg.apis {
            let (Some(c), Some(route)) = (&api.cors, &api.route) else {
                continue;
            };
            routes.push(Arc::new(compile(c, route)));
        }
        routes.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        Self { routes }
    }

    /// The CORS decision for a route request, when it has an `Origin` and its API has `cors`.
    pub fn lookup(&self, path: &str, headers: &HeaderMap) -> Option<Decision> {
        if self.routes.is_empty() {
            return None;
        }
        let origin = headers.get(http::header::ORIGIN)?;
        let policy = self.routes.iter().find(|p| {
            path.starts_with(&*p.prefix)
                && matches!(path.as_bytes().get(p.prefix.len()), None | Some(b'/'))
        })?;
        let o = origin.to_str().unwrap_or("");
        let allowed = policy.any_origin || policy.origins.iter().any(|a| a == o);
        Some(Decision {
            policy: policy.clone(),
            origin: origin.clone(),
            allowed,
        })
    }
}

fn compile(c: &Cors, route: &str) -> Policy {
    let methods: Vec<Method> = c
        .allowed_methods
        .iter()
        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
        .collect();
    Policy {
        prefix: route.strip_suffix('/').unwrap_or(route).into(),
        any_origin: c.allowed_origins.iter().any(|o| o == "*"),
        origins: c.allowed_origins.clone(),
        methods_value: join(methods.iter().map(|m| m.as_str().to_owned())),
        methods,
        any_header: c.allowed_headers.iter().any(|h| h == "*"),
        headers: c
            .allowed_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        expose: join(c.expose_headers.iter().cloned()),
        credentials: c.allow_credentials,
        max_age: c.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
    }
}

/// What CORS decided for one request.
pub struct Decision {
    policy: Arc<Policy>,
    origin: HeaderValue,
    allowed: bool,
}

impl Decision {
    /// Whether `method`/`headers` make this request a CORS preflight.
    pub fn is_preflight(&self, method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS && headers.contains_key(ACRM)
    }

    /// The preflight answer: 204 with the CORS fields, or 403 `cors_not_allowed` without any.
    pub fn preflight(&self, mut done: Completion, headers: &HeaderMap) -> Response<ProxyBody> {
        let p = &self.policy;
        let method_ok = headers
            .get(ACRM)
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
            .is_some_and(|m| p.methods.contains(&m));
        let requested: Vec<String> = headers
            .get_all(ACRH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let headers_ok = p.any_header || requested.iter().all(|h| p.headers.contains(h));
        if !(self.allowed && method_ok && headers_ok) {
            let err = GatewayError::new(
                ErrorCode::CorsNotAllowed,
                "this origin, method or header is not allowed by the API's CORS policy",
            );
            return crate::handler::deny(done, &err);
        }
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        self.allow_origin(h);
        if let Some(v) = &p.methods_value {
            h.insert(ACAM, v.clone());
        }
        let allow_headers = if p.any_header {
            join(requested.into_iter())
        } else {
            join(p.headers.iter().cloned())
        };
        if let Some(v) = allow_headers {
            h.insert(ACAH, v);
        }
        if let Some(v) = &p.max_age {
            h.insert(ACMA, v.clone());
        }
        done.status = 204;
        done.decision = "allow";
        done.reason = Some("cors_preflight");
        resp.body_mut().on_complete(done);
        resp
    }

    fn allow_origin(&self, h: &mut HeaderMap) {
        let p = &self.policy;
        if p.any_origin && !p.credentials {
            h.insert(ACAO, HeaderValue::from_static("*"));
        } else {
            h.insert(ACAO, self.origin.clone());
        }
        if p.credentials {
            h.insert(ACAC, HeaderValue::from_static("true"));
        }
        h.append(VARY, HeaderValue::from_static("Origin"));
    }

    /// Adds the CORS fields of an actual (non-preflight) response, when the origin is allowed.
    pub fn apply(&self, h: &mut HeaderMap) {
        if !self.allowed {
            return;
        }
        self.allow_origin(h);
        if let Some(v) = &self.policy.expose {
            h.insert(ACEH, v.clone());
        }
    }
}
