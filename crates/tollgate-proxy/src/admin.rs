//! The admin listener: Prometheus metrics, health and readiness probes,
//! configuration reload and status, the emergency switches, and the live
//! rate-limit counters (`/admin/limits`, see `admin_limits.rs`), and the
//! endpoints traffic reached (`/admin/discovery`, see `discovery.rs`).
//!
//! It binds to loopback by default. When `admin.token` is configured every
//! endpoint except `/healthz` and `/readyz` requires `Authorization: Bearer
//! <token>` (compared in constant time); configuration validation refuses a
//! non-loopback admin address without a token. Unauthorised calls get 401 with
//! a problem+json body.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::reload::Reloader;
use crate::state::Gateway;

#[derive(Clone)]
struct AdminState {
    gateway: Arc<Gateway>,
    reloader: Arc<Reloader>,
}

/// Builds the admin router.
pub fn router(gateway: Arc<Gateway>, reloader: Arc<Reloader>) -> Router {
    let ui = crate::admin_ui::router(Arc::clone(&gateway), Arc::clone(&reloader));
    let state = AdminState { gateway, reloader };
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/reload", post(reload))
        .route("/admin/config", get(config_status))
        .route("/admin/switches", get(switches))
        .route("/admin/limits", get(limits))
        .route("/admin/cache/purge", post(cache_purge))
        .route("/admin/discovery", get(discovery))
        .route(
            "/admin/switches/deny-all",
            put(deny_all_on).delete(deny_all_off),
        )
        .route("/admin/switches/apis/{name}", put(api_off).delete(api_on))
        .route(
            "/admin/switches/consumers/{name}",
            put(consumer_off).delete(consumer_on),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(not_found)
        .with_state(state)
        .merge(ui)
}

/// Serves the admin router until `shutdown` resolves.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    reloader: Arc<Reloader>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(gateway, reloader))
        .with_graceful_shutdown(shutdown)
        .await
}

fn problem(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "type": format!("https://tollgate.dev/errors/{code}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail.into(),
        "code": code,
    });
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert("tollgate-error", HeaderValue::from_static(code));
    resp
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    let mut resp = (status, value.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn require_token(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    let active = st.gateway.active.load();
    if let Some(expected) = active.admin_token() {
        let presented = bearer(req.headers()).unwrap_or_default();
        let ok: bool = presented
            .as_bytes()
            .ct_eq(expected.expose().as_bytes())
            .into();
        if !ok {
            let mut resp = problem(
                StatusCode::UNAUTHORIZED,
                "admin_unauthorized",
                "a valid admin bearer token is required",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
            return resp;
        }
    }
    drop(active);
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(st): State<AdminState>) -> Response {
    if st.gateway.shutdown.is_triggered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(st): State<AdminState>) -> Response {
    let mut resp = st.gateway.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn reload(State(st): State<AdminState>) -> Response {
    match st.reloader.reload("admin").await {
        Ok(version) => json(
            StatusCode::OK,
            serde_json::json!({ "status": "applied", "version": version }),
        ),
        Err(errors) => {
            let version = st.reloader.status().version;
            json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({ "status": "rejected", "version": version, "errors": errors.lines().collect::<Vec<_>>() }),
            )
        }
    }
}

async fn config_status(State(st): State<AdminState>) -> Response {
    let status = st.reloader.status();
    let active = st.gateway.active.load();
    let policy = &active.policy;
    let cfg = policy.config();
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": &*status,
            "default_action": cfg.default_action,
            "report_only": cfg.report_only,
            "apis": cfg.apis.iter().map(|a| &a.name).collect::<Vec<_>>(),
            "consumers": cfg.consumers.iter().map(|c| &c.name).collect::<Vec<_>>(),
        }),
    )
}

async fn switches(State(st): State<AdminState>) -> Response {
    json(
        StatusCode::OK,
        serde_json::json!(&*st.gateway.switches.snapshot()),
    )
}

fn switched(st: &AdminState, what: &str, name: &str, denied: bool) -> Response {
    tracing::warn!(
        switch.target = what,
        switch.name = name,
        switch.denied = denied,
        "emergency switch changed"
    );
    json(
        StatusCode::OK,
        serde_json::json!(&*st.gateway.switches.snapshot()),
    )
}

async fn deny_all_on(State(st): State<AdminState>) -> Response {
    st.gateway.switches.set_deny_all(true);
    switched(&st, "all", "*", true)
}

async fn deny_all_off(State(st): State<AdminState>) -> Response {
    st.gateway.switches.set_deny_all(false);
    switched(&st, "all", "*", false)
}

#[derive(Deserialize)]
struct Name {
    name: String,
}

async fn api_off(State(st): State<AdminState>, Path(Name { name }): Path<Name>) -> Response {
    let active = st.gateway.active.load();
    if !active.policy.api_names().any(|n| n == name) {
        return problem(
            StatusCode::NOT_FOUND,
            "unknown_api",
            format!("no API named {name:?} in the current configuration"),
        );
    }
    st.gateway.switches.set_api(&name, true);
    switched(&st, "api", &name, true)
}

async fn api_on(State(st): State<AdminState>, Path(Name { name }): Path<Name>) -> Response {
    st.gateway.switches.set_api(&name, false);
    switched(&st, "api", &name, false)
}

async fn consumer_off(State(st): State<AdminState>, Path(Name { name }): Path<Name>) -> Response {
    let active = st.gateway.active.load();
    if !active.policy.consumer_names().any(|n| n == name) {
        return problem(
            StatusCode::NOT_FOUND,
            "unknown_consumer",
            format!("no consumer named {name:?} in the current configuration"),
        );
    }
    st.gateway.switches.set_consumer(&name, true);
    switched(&st, "consumer", &name, true)
}

async fn consumer_on(State(st): State<AdminState>, Path(Name { name }): Path<Name>) -> Response {
    st.gateway.switches.set_consumer(&name, false);
    switched(&st, "consumer", &name, false)
}

async fn limits(State(st): State<AdminState>) -> Response {
    json(
        StatusCode::OK,
        crate::admin_limits::snapshot(&st.gateway).await,
    )
}

/// The endpoints traffic reached (`discovery.rs`), for `tollgate discover`.
async fn discovery(State(st): State<AdminState>) -> Response {
    let active = st.gateway.active.load();
    json(
        StatusCode::OK,
        st.gateway
            .discovery
            .snapshot(&active.policy.config().discovery),
    )
}

/// `POST /admin/cache/purge` with `{"api": "<name>"}` (every stored response of the API)
/// or `{"api": "<name>", "url": "<upstream URL>"}` (that URL's, every variant and consumer).
async fn cache_purge(State(st): State<AdminState>, body: axum::body::Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Purge {
        api: String,
        #[serde(default)]
        url: Option<String>,
    }
    let req: Purge = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"api\": name, \"url\"?: upstream URL}}: {e}"),
            );
        }
    };
    let active = st.gateway.active.load();
    if !active.policy.api_names().any(|n| n == req.api) {
        return problem(
            StatusCode::NOT_FOUND,
            "unknown_api",
            format!("no API named {:?} in the current configuration", req.api),
        );
    }
    drop(active);
    let (_, before) = st.gateway.cache.size();
    st.gateway.cache.purge(&req.api, req.url.as_deref());
    let (bytes, after) = st.gateway.cache.size();
    tracing::info!(cache.api = %req.api, cache.url = req.url.as_deref().unwrap_or("*"), "cache purged");
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "purged",
            "api": req.api,
            "url": req.url,
            "removed": before.saturating_sub(after),
            "entries": after,
            "bytes": bytes,
        }),
    )
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
}
