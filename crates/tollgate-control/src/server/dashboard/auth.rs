//! Sign-in, sign-out and the session every page handler starts from ([`Ctx::from_headers`]).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tollgate_ui::html::{self, Tone};
use tollgate_ui::session::{self, SessionKey};

use super::{ASSETS, BASE, UiError, html_response, redirect};
use crate::server::store::{Operator, Role};
use crate::server::{AppState, hash_token, unix_now};

const COOKIE: &str = "tg_session";
/// A session lasts a working day; signing in again is cheap.
const SESSION_SECS: u64 = 8 * 3600;

/// The session key: derived from the bundle-signing key, which every replica of one control
/// plane shares, so a session works on whichever replica the load balancer picks.
fn key(state: &AppState) -> SessionKey {
    SessionKey::derive(&state.signing.to_bytes(), "tollgate-dashboard-session-v1")
}

/// The signed-in operator of a request, with the CSRF token its forms carry.
pub(crate) struct Ctx {
    pub op: Operator,
    pub csrf: String,
    cookie: String,
    key: SessionKey,
}

impl Ctx {
    /// The operator behind the session cookie; `SignIn(next)` when there is none (or it
    /// expired, was tampered with, or its token was deleted).
    pub async fn from_headers(
        state: &AppState,
        headers: &HeaderMap,
        next: &str,
    ) -> Result<Ctx, UiError> {
        let key = key(state);
        let cookie = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| session::cookie(c, COOKIE))
            .unwrap_or_default()
            .to_owned();
        let Some(hash) = key.open(&cookie, unix_now()) else {
            return Err(UiError::SignIn(next.to_owned()));
        };
        let Some(op) = state.store.operator_by_hash(hash.to_owned()).await? else {
            return Err(UiError::SignIn(next.to_owned()));
        };
        let csrf = key.csrf(&cookie);
        Ok(Ctx {
            op,
            csrf,
            cookie,
            key,
        })
    }

    /// For POST handlers: the session must be valid, the request must come from this origin,
    /// carry the session's CSRF token, and (for changes) the operator must be an admin.
    pub async fn for_post(
        state: &AppState,
        headers: &HeaderMap,
        form: &[(String, String)],
        next: &str,
        admin_only: bool,
    ) -> Result<Ctx, UiError> {
        same_origin(headers)?;
        let ctx = Ctx::from_headers(state, headers, next).await?;
        let presented = html::form_get(form, "csrf").unwrap_or_default();
        if !ctx.key.check_csrf(&ctx.cookie, presented) {
            tracing::warn!(operator.name = %ctx.op.name, "dashboard: POST without a valid CSRF token refused");
            return Err(UiError::Forbidden(
                "the form has expired or did not come from this dashboard; reload the page and try again".into(),
            ));
        }
        if admin_only && ctx.op.role != Role::Admin {
            tracing::warn!(operator.name = %ctx.op.name, "dashboard: viewer attempted a change");
            return Err(UiError::Forbidden(format!(
                "operator {:?} has the viewer role (read-only)",
                ctx.op.name
            )));
        }
        Ok(ctx)
    }

    pub fn is_admin(&self) -> bool {
        self.op.role == Role::Admin
    }
}

/// A POST whose `Origin` names another site is refused (SameSite=Strict already keeps the
/// cookie off such requests; this also covers the sign-in form, which has no session yet).
fn same_origin(headers: &HeaderMap) -> Result<(), UiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or(origin);
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        tracing::warn!(http.origin = %origin, "dashboard: cross-origin POST refused");
        Err(UiError::Forbidden("cross-origin request refused".into()))
    }
}

/// Only local dashboard paths are followed after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.starts_with("//")
                && !n.contains("\\")
                && !n.contains("://") =>
        {
            n
        }
        _ => "/ui/fleet",
    }
}

#[derive(serde::Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
}

fn login_html(next: &str, error: Option<&str>) -> String {
    let notice = error
        .map(|e| html::notice(Tone::Bad, e))
        .unwrap_or_default();
    let body = format!(
        "<div class=\"login\"><section class=\"card\"><h2>Sign in to the control plane</h2>{notice}\
         <form method=\"post\" action=\"{BASE}/login\" id=\"login-form\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Operator token<input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" \
         placeholder=\"tgop_…\" required autofocus></label>\
         <button class=\"btn\" id=\"sign-in\">Sign in</button></form>\
         <p class=\"muted small\">Create a token with <code>tollgate cp operators create NAME --role viewer</code>. \
         The token is checked once; the browser keeps only a signed session cookie.</p></section></div>",
        html::esc(next)
    );
    html::bare_page("Sign in", ASSETS, &body)
}

pub(super) async fn login_page(Query(q): Query<NextQuery>) -> Response {
    html_response(
        StatusCode::OK,
        login_html(safe_next(q.next.as_deref()), None),
    )
}

pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, UiError> {
    same_origin(&headers)?;
    let form = html::form_decode(&body);
    let next = safe_next(html::form_get(&form, "next")).to_owned();
    let token = html::form_get(&form, "token").unwrap_or_default().trim();
    let hash = hash_token(token);
    let op = if token.is_empty() {
        None
    } else {
        state.store.operator_by_hash(hash.clone()).await?
    };
    let Some(op) = op else {
        tracing::warn!("dashboard: sign-in with an unknown operator token");
        return Ok(html_response(
            StatusCode::UNAUTHORIZED,
            login_html(&next, Some("That token is not a valid operator token.")),
        ));
    };
    let value = key(&state)
        .seal(&hash, unix_now() + SESSION_SECS)
        .ok_or(UiError::Internal)?;
    tracing::info!(operator.name = %op.name, operator.role = op.role.as_str(), "dashboard: signed in");
    let mut resp = redirect(&next);
    let cookie = session::set_cookie(COOKIE, &value, BASE, SESSION_SECS, true);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

pub(super) async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, UiError> {
    let form = html::form_decode(&body);
    let ctx = Ctx::for_post(&state, &headers, &form, "/ui/fleet", false).await?;
    tracing::info!(operator.name = %ctx.op.name, "dashboard: signed out");
    let mut resp = redirect("/ui/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(COOKIE, BASE, true)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_pages_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/ui/config/acme")), "/ui/config/acme");
        for bad in [
            "https://evil.example/ui/",
            "//evil.example/ui/",
            "/ui/\\evil",
            "/v1/groups",
            "/ui/x?u=https://e",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/fleet", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui/fleet");
    }

    #[test]
    fn cross_origin_posts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("cp.example:8443"));
        assert!(
            same_origin(&h).is_ok(),
            "no Origin: not a browser cross-site POST"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://cp.example:8443"),
        );
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(same_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h).is_err());
    }
}
