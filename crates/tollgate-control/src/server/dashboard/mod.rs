//! The control-plane dashboard under `/ui/`: server-rendered HTML pages for operators.
//!
//! Pages: **Fleet** (gateways per group: health, version applied vs assigned, last seen,
//! drift), **Traffic** (usage reported by the fleet: requests, errors, 429s and latency over
//! time, top APIs / consumers / endpoints, quota usage, groups side by side), **Audit**
//! (config changes, denials, DLP hits) and **Config** (versions, line diff between two versions,
//! rollout state, start / promote / roll back — admins only).
//!
//! Auth ([`auth`]): the sign-in form takes an operator token; the session is an HMAC-signed
//! `HttpOnly; Secure; SameSite=Strict` cookie naming the token's hash (never the token), keyed
//! from the bundle-signing key so every replica sharing it accepts the session. Each request
//! re-reads the operator, so a deleted token ends its sessions at once. Every POST carries a
//! CSRF token bound to the session and must come from this origin. A viewer sees no action
//! buttons and its POSTs get 403; a group-scoped viewer sees its group only — lists and
//! charts are filtered, another group's page answers 403.

mod audit;
mod auth;
mod config;
mod fleet;
mod traffic;
mod usage_data;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tollgate_ui::html::{self, NavItem, Shell, User};

use super::AppState;
use super::store::{Operator, Role, StoreError};

pub(crate) use auth::Ctx;

/// Where the pages live.
pub const BASE: &str = "/ui";
const ASSETS: &str = "/ui/assets";

/// The dashboard's routes (merged into the API router, which carries the state).
pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/fleet") }))
        .route("/ui/", get(|| async { redirect("/ui/fleet") }))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/login", get(auth::login_page).post(auth::login))
        .route("/ui/logout", post(auth::logout))
        .route("/ui/fleet", get(fleet::page))
        .route("/ui/traffic", get(traffic::page))
        .route("/ui/audit", get(audit::page))
        .route("/ui/config", get(config::index))
        .route("/ui/config/{g}", get(config::page))
        .route("/ui/config/{g}/rollout", post(config::start))
        .route("/ui/config/{g}/promote", post(config::promote))
        .route("/ui/config/{g}/rollback", post(config::rollback))
}

async fn asset(Path(name): Path<String>) -> Response {
    match tollgate_ui::asset(&name) {
        Some((ct, body)) => (
            [
                (header::CONTENT_TYPE, ct),
                (header::CACHE_CONTROL, "public, max-age=3600"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// An HTML response with the UI's security headers.
pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    for (k, v) in tollgate_ui::SECURITY_HEADERS {
        h.insert(*k, HeaderValue::from_static(v));
    }
    resp
}

/// 303 See Other to a local path.
pub(crate) fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// What a page handler can fail with; rendered as an HTML page (the API's JSON errors are for
/// machines, these are for people).
pub(crate) enum UiError {
    /// Not signed in: go to the sign-in page, then come back.
    SignIn(String),
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Internal,
}

impl From<StoreError> for UiError {
    fn from(e: StoreError) -> UiError {
        match e {
            StoreError::NotFound(m) => UiError::NotFound(m),
            StoreError::Conflict(m) | StoreError::State(m) | StoreError::Invalid(m) => {
                UiError::BadRequest(m)
            }
            other => {
                tracing::error!(error = %other, "dashboard: control plane store failed");
                UiError::Internal
            }
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, title, msg) = match self {
            UiError::SignIn(next) => {
                return redirect(&format!("{BASE}/login?next={}", html::url(&next)));
            }
            UiError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            UiError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            UiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Cannot do that", m),
            UiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "internal error (see the control plane log)".to_owned(),
            ),
        };
        let body = format!(
            "<section class=\"card\" id=\"error\" data-status=\"{}\"><h2>{}</h2><p>{}</p>\
             <p><a class=\"btn secondary\" href=\"{BASE}/fleet\">Back to the fleet</a></p></section>",
            status.as_u16(),
            html::esc(title),
            html::esc(&msg)
        );
        html_response(status, html::bare_page(title, ASSETS, &body))
    }
}

/// 403 unless `op` may see `group` (a group-scoped viewer asking for another group).
pub(crate) fn require_group(op: &Operator, group: &str) -> Result<(), UiError> {
    if op.sees_group(group) {
        Ok(())
    } else {
        tracing::info!(operator.name = %op.name, group.name = %group, "dashboard: scoped viewer denied another group");
        Err(UiError::Forbidden(format!(
            "operator {:?} may only see its own group",
            op.name
        )))
    }
}

const NAV: &[NavItem<'static>] = &[
    NavItem {
        key: "fleet",
        href: "/ui/fleet",
        label: "Fleet",
    },
    NavItem {
        key: "traffic",
        href: "/ui/traffic",
        label: "Traffic",
    },
    NavItem {
        key: "audit",
        href: "/ui/audit",
        label: "Audit",
    },
    NavItem {
        key: "config",
        href: "/ui/config",
        label: "Config",
    },
];

/// A full page for the signed-in operator.
pub(crate) fn render(ctx: &Ctx, active: &str, title: &str, body: &str) -> Response {
    let role = match (&ctx.op.role, ctx.op.visible_group()) {
        (Role::Admin, _) => "admin".to_owned(),
        (Role::Viewer, None) => "viewer".to_owned(),
        (Role::Viewer, Some(g)) => format!("viewer · {g}"),
    };
    let shell = Shell {
        product: "Control plane",
        assets: ASSETS,
        home: "/ui/fleet",
        nav: NAV,
        active,
        user: Some(User {
            name: &ctx.op.name,
            role: &role,
            csrf: &ctx.csrf,
            logout: "/ui/logout",
        }),
    };
    html_response(StatusCode::OK, html::page(&shell, title, body))
}

/// The groups this operator may see, in name order.
pub(crate) async fn visible_groups(
    state: &AppState,
    op: &Operator,
) -> Result<Vec<crate::protocol::Group>, UiError> {
    let mut groups = state.store.groups().await?;
    groups.retain(|g| op.sees_group(&g.name));
    Ok(groups)
}

/// A `<select name="group">` of visible groups (with "All groups" unless scoped).
pub(crate) fn group_select(
    groups: &[crate::protocol::Group],
    current: Option<&str>,
    all: bool,
) -> String {
    let mut out = String::from("<label>Group<select name=\"group\" id=\"group-select\">");
    if all {
        out.push_str("<option value=\"\">All groups</option>");
    }
    for g in groups {
        let sel = if current == Some(g.name.as_str()) {
            " selected"
        } else {
            ""
        };
        out.push_str(&format!(
            "<option value=\"{n}\"{sel}>{n}</option>",
            n = html::esc(&g.name)
        ));
    }
    out.push_str("</select></label>");
    out
}

/// Whether a gateway stopped reporting: status reports come every 30 s, so three missed
/// reports mean it is offline (or cut off from the control plane).
pub(crate) fn offline(now: u64, last_seen: u64) -> bool {
    now.saturating_sub(last_seen) > 3 * crate::agent::STATUS_INTERVAL.as_secs()
}
