//! HTTP handlers of the control-plane API (shapes in [`crate::protocol`]).
//!
//! Authentication: every route but `POST /v1/enroll` needs `Authorization: Bearer <token>`.
//! Operator routes accept operator tokens (a viewer gets 403 on anything that changes state);
//! gateway routes accept gateway credentials (unknown or revoked → 401). Every failure is an
//! [`ApiError`] JSON body with a stable `error` code.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest as _, Sha256};

use super::store::{GatewayAuth, Operator, Role, StoreError};
use super::{AppState, hash_token, random_token, unix_now};
use crate::bundle::{SignedBundle, sign};
use crate::protocol::{
    ApiError, ConfigQuery, CreateGroup, CreateOperatorToken, EnrollRequest, EnrollResponse,
    MAX_WAIT_SECS, PublishResponse, RolloutStatus, StartRollout, StatusReport, TokenResponse,
};

type St = State<Arc<AppState>>;

pub(super) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll))
        .route("/v1/gateway/config", get(gateway_config))
        .route("/v1/gateway/status", post(gateway_status))
        .route("/v1/groups", post(create_group).get(list_groups))
        .route(
            "/v1/groups/{g}/enrollment-tokens",
            post(create_enrollment_token),
        )
        .route("/v1/groups/{g}/configs", post(publish).get(list_versions))
        .route(
            "/v1/groups/{g}/rollout",
            post(rollout_start).get(rollout_status),
        )
        .route("/v1/groups/{g}/configs/{v}/restore", post(restore))
        .route("/v1/groups/{g}/rollout/promote", post(rollout_promote))
        .route("/v1/groups/{g}/rollout/rollback", post(rollout_rollback))
        .route("/v1/gateways", get(list_gateways))
        .route("/v1/gateways/{id}/revoke", post(revoke))
        .route("/v1/operator-tokens", post(create_operator_token))
        .route("/v1/audit", get(audit))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(super::dashboard::router())
        .merge(super::usage::router())
        .merge(super::alerts::router())
        .fallback(|| async { Fail::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        // Config YAML can be large-ish; anything beyond this is not a gateway config.
        .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024))
        .with_state(state)
}

/// An error response.
pub(crate) struct Fail(StatusCode, ApiError);

impl Fail {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Fail {
        Fail(
            status,
            ApiError {
                error: code.into(),
                message: message.into(),
                errors: Vec::new(),
            },
        )
    }
    fn unauthorized() -> Fail {
        Fail::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, unknown or revoked bearer token",
        )
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        match e {
            StoreError::Conflict(m) => Fail::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::NotFound(m) => Fail::new(StatusCode::NOT_FOUND, "not_found", m),
            StoreError::State(m) => Fail::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Invalid(m) => Fail::new(StatusCode::BAD_REQUEST, "bad_request", m),
            other => {
                tracing::error!(error = %other, "control plane store failed");
                Fail::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error (see the control plane log)",
                )
            }
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authenticates an operator token (any role, scoped or not).
pub(crate) async fn operator(state: &AppState, headers: &HeaderMap) -> Result<Operator, Fail> {
    let token = bearer(headers).ok_or_else(Fail::unauthorized)?;
    state
        .store
        .operator_by_hash(hash_token(token))
        .await?
        .ok_or_else(Fail::unauthorized)
}

/// Authenticates an admin operator token (403 for viewers).
pub(crate) async fn admin(state: &AppState, headers: &HeaderMap) -> Result<Operator, Fail> {
    let op = operator(state, headers).await?;
    if op.role != Role::Admin {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("operator {:?} has the viewer role (read-only)", op.name),
        ));
    }
    Ok(op)
}

/// The one check every read handler makes for a per-group resource: a group-scoped viewer
/// asking for another group's gateways, versions, rollout, audit or usage gets 403 (lists are
/// filtered with [`Operator::sees_group`] instead).
pub(crate) fn require_group(op: &Operator, group: &str) -> Result<(), Fail> {
    if op.sees_group(group) {
        Ok(())
    } else {
        Err(Fail::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("operator {:?} may only see its own group", op.name),
        ))
    }
}

pub(crate) async fn gateway(state: &AppState, headers: &HeaderMap) -> Result<GatewayAuth, Fail> {
    let token = bearer(headers).ok_or_else(Fail::unauthorized)?;
    match state.store.gateway_by_hash(hash_token(token)).await? {
        Some(g) if !g.revoked => Ok(g),
        _ => Err(Fail::unauthorized()),
    }
}

/// Group names become URL path segments and labels: keep them boring.
fn check_name(kind: &str, name: &str) -> Result<(), Fail> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "{kind} name {name:?}: use 1-63 of a-z, 0-9, '-', '_', starting with a letter or digit"
            ),
        ))
    }
}

async fn enroll(
    State(state): St,
    req: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<EnrollResponse>, Fail> {
    let Json(req) = req.map_err(bad_json)?;
    if req.name.trim().is_empty() || req.name.len() > 253 {
        return Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name must be 1-253 characters",
        ));
    }
    let gateway_id = random_token("gw_").map_err(internal)?;
    // Short, readable ids: 16 hex digits of randomness are plenty for a fleet.
    let gateway_id: String = gateway_id.chars().take(3 + 16).collect();
    let credential = random_token("tggw_").map_err(internal)?;
    let group = state
        .store
        .enroll(
            hash_token(&req.token),
            gateway_id.clone(),
            req.name.clone(),
            req.labels,
            hash_token(&credential),
        )
        .await?
        .ok_or_else(|| {
            Fail::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "enrollment token is unknown, expired or already used",
            )
        })?;
    tracing::info!(gateway.id = %gateway_id, gateway.name = %req.name, group.name = %group, "gateway enrolled");
    Ok(Json(EnrollResponse {
        gateway_id,
        credential,
        group,
        control_plane_key: state.key.clone(),
    }))
}

async fn gateway_config(
    State(state): St,
    headers: HeaderMap,
    q: Result<Query<ConfigQuery>, QueryRejection>,
) -> Result<Response, Fail> {
    let gw = gateway(&state, &headers).await?;
    let Query(q) = q.map_err(bad_query)?;
    let wait = Duration::from_secs(q.wait.min(MAX_WAIT_SECS));
    // Subscribe before reading the store: a publish landing between the read and the wait
    // still marks the receiver changed, so it is never missed.
    let mut rx = state
        .subscribe(&gw.group)
        .ok_or_else(|| internal("watch registry poisoned"))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some((version, bundle)) = super::rollout::bundle_for(&state, &gw).await?
            && version > q.after
        {
            let bundle = fresh(&state, bundle)?;
            return Ok((
                StatusCode::OK,
                [(http::header::CONTENT_TYPE, "application/json")],
                bundle,
            )
                .into_response());
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out, or the channel closed (cannot happen while the state lives).
            _ => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

/// The stored bundle, re-signed with a new expiry once half its lifetime has passed, so a
/// version that stays assigned for months is still accepted by a gateway that (re)starts late.
/// `issued_at` keeps the publish time: it is what publish-to-applied is measured from.
fn fresh(state: &AppState, stored: String) -> Result<String, Fail> {
    let signed: SignedBundle = serde_json::from_str(&stored).map_err(internal)?;
    let now = unix_now();
    if signed.bundle.expires_at.saturating_sub(now) > super::BUNDLE_TTL_SECS / 2 {
        return Ok(stored);
    }
    let mut bundle = signed.bundle;
    bundle.expires_at = now + super::BUNDLE_TTL_SECS;
    let resigned = sign(&bundle, &state.signing, &state.key.key_id).map_err(internal)?;
    serde_json::to_string(&resigned).map_err(internal)
}

async fn gateway_status(
    State(state): St,
    headers: HeaderMap,
    report: Result<Json<StatusReport>, JsonRejection>,
) -> Result<StatusCode, Fail> {
    let gw = gateway(&state, &headers).await?;
    let Json(report) = report.map_err(bad_json)?;
    // Versions are stored as BIGINT; a report can move the group's next version number forward
    // (see `next_version`), so keep it far from overflowing.
    if report.applied_version > (i64::MAX / 2) as u64 {
        return Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "applied_version out of range",
        ));
    }
    let last_error = report
        .last_error
        .map(|e| e.chars().take(2000).collect::<String>());
    let lag = state
        .store
        .report_status(
            gw.id.clone(),
            report.applied_version,
            report.healthy,
            last_error,
            report.started_at,
        )
        .await?;
    if let Some(ms) = lag {
        tracing::info!(
            gateway.id = %gw.id,
            group.name = %gw.group,
            config.version = report.applied_version,
            config.publish_to_applied_ms = ms,
            "gateway applied a config version"
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn create_group(
    State(state): St,
    headers: HeaderMap,
    req: Result<Json<CreateGroup>, JsonRejection>,
) -> Result<(StatusCode, Json<crate::protocol::Group>), Fail> {
    let op = admin(&state, &headers).await?;
    let Json(req) = req.map_err(bad_json)?;
    check_name("group", &req.name)?;
    let g = state
        .store
        .create_group(req.name, req.labels, op.name)
        .await?;
    Ok((StatusCode::CREATED, Json(g)))
}

async fn list_groups(State(state): St, headers: HeaderMap) -> Result<Response, Fail> {
    let op = operator(&state, &headers).await?;
    let mut groups = state.store.groups().await?;
    groups.retain(|g| op.sees_group(&g.name));
    Ok(Json(groups).into_response())
}

async fn create_enrollment_token(
    State(state): St,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Result<(StatusCode, Json<TokenResponse>), Fail> {
    let op = admin(&state, &headers).await?;
    let token = random_token("tgen_").map_err(internal)?;
    state
        .store
        .create_enrollment_token(
            group,
            hash_token(&token),
            unix_now() + super::ENROLLMENT_TTL_SECS,
            op.name,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(TokenResponse { token })))
}

async fn create_operator_token(
    State(state): St,
    headers: HeaderMap,
    req: Result<Json<CreateOperatorToken>, JsonRejection>,
) -> Result<(StatusCode, Json<TokenResponse>), Fail> {
    let op = admin(&state, &headers).await?;
    let Json(req) = req.map_err(bad_json)?;
    check_name("operator token", &req.name)?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "role must be admin or viewer",
        )
    })?;
    if req.group.is_some() && role != Role::Viewer {
        return Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "only viewer tokens can be scoped to a group",
        ));
    }
    let token = random_token("tgop_").map_err(internal)?;
    state
        .store
        .create_operator(req.name, role, hash_token(&token), req.group, op.name)
        .await?;
    Ok((StatusCode::CREATED, Json(TokenResponse { token })))
}

async fn list_gateways(State(state): St, headers: HeaderMap) -> Result<Response, Fail> {
    let op = operator(&state, &headers).await?;
    let mut list = state.store.gateways().await?;
    list.retain(|g| op.sees_group(&g.group));
    Ok(Json(list).into_response())
}

async fn revoke(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Fail> {
    let op = admin(&state, &headers).await?;
    state.store.revoke(id.clone(), op.name).await?;
    tracing::info!(gateway.id = %id, "gateway credential revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Validates with the exact code path a gateway (and `tollgate validate`) uses, then signs,
/// stores, assigns and wakes the group's long-polls.
#[derive(Debug, serde::Deserialize)]
struct PublishQuery {
    /// `false`: store and sign only, for a rollout (`POST /v1/groups/{g}/rollout`).
    #[serde(default = "yes")]
    assign: bool,
}

fn yes() -> bool {
    true
}

async fn publish(
    State(state): St,
    headers: HeaderMap,
    Path(group): Path<String>,
    q: Result<Query<PublishQuery>, QueryRejection>,
    body: String,
) -> Result<(StatusCode, Json<PublishResponse>), Fail> {
    let op = admin(&state, &headers).await?;
    let Query(q) = q.map_err(bad_query)?;
    if !state.store.group_exists(group.clone()).await? {
        return Err(Fail::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no group {group:?}"),
        ));
    }
    let origin = format!("{group}.yaml");
    let yaml = body.clone();
    let checked = tokio::task::spawn_blocking(move || {
        tollgate_proxy::reload::load_policy_text(&yaml, &origin, 0).map(|_| ())
    })
    .await
    .map_err(|e| internal(e.to_string()))?;
    if let Err(errors) = checked {
        let errors: Vec<String> = errors
            .iter()
            .filter(|e| !gateway_side_secret(&e.message))
            .map(ToString::to_string)
            .collect();
        if !errors.is_empty() {
            return Err(Fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                ApiError {
                    error: "invalid_config".into(),
                    message: format!(
                        "configuration has {} error(s); nothing was published",
                        errors.len()
                    ),
                    errors,
                },
            ));
        }
    }
    let sha = crate::bundle::hex(&Sha256::digest(body.as_bytes()));
    // Two publishes racing for one version number: the loser retries with the next number.
    for _ in 0..5 {
        let version = state.store.next_version(group.clone()).await?;
        let v = super::rollout::signed_version(
            &state, &group, version, &body, &sha, &op.name, q.assign,
        )?;
        let result = state.store.publish(v).await;
        match result {
            Ok(()) => {
                if q.assign {
                    state.notify(&group, version);
                }
                tracing::info!(group.name = %group, config.version = version, config.assigned = q.assign, operator.name = %op.name, "config published");
                return Ok((StatusCode::CREATED, Json(PublishResponse { version })));
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Fail::new(
        StatusCode::CONFLICT,
        "conflict",
        "concurrent publishes; retry",
    ))
}

async fn list_versions(
    State(state): St,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Result<Response, Fail> {
    let op = operator(&state, &headers).await?;
    require_group(&op, &group)?;
    Ok(Json(state.store.versions(group).await?).into_response())
}

async fn restore(
    State(state): St,
    headers: HeaderMap,
    Path((group, version)): Path<(String, String)>,
) -> Result<(StatusCode, Json<PublishResponse>), Fail> {
    let op = admin(&state, &headers).await?;
    let version: u64 = version.parse().map_err(|_| {
        Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("version {version:?} is not a number"),
        )
    })?;
    let version = super::rollout::restore(&state, &op.name, &group, version).await?;
    Ok((StatusCode::CREATED, Json(PublishResponse { version })))
}

async fn rollout_status(
    State(state): St,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Result<Json<RolloutStatus>, Fail> {
    let op = operator(&state, &headers).await?;
    require_group(&op, &group)?;
    Ok(Json(super::rollout::status(&state, &group).await?))
}

async fn rollout_start(
    State(state): St,
    headers: HeaderMap,
    Path(group): Path<String>,
    req: Result<Json<StartRollout>, JsonRejection>,
) -> Result<(StatusCode, Json<RolloutStatus>), Fail> {
    let op = admin(&state, &headers).await?;
    let Json(req) = req.map_err(bad_json)?;
    let s = super::rollout::start(&state, &op, &group, req).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

async fn rollout_promote(
    State(state): St,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Result<Json<RolloutStatus>, Fail> {
    let op = admin(&state, &headers).await?;
    Ok(Json(super::rollout::promote(&state, &op, &group).await?))
}

async fn rollout_rollback(
    State(state): St,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Result<Json<RolloutStatus>, Fail> {
    let op = admin(&state, &headers).await?;
    Ok(Json(super::rollout::rollback(&state, &op, &group).await?))
}

#[derive(Debug, serde::Deserialize)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<u64>,
}

async fn audit(
    State(state): St,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Fail> {
    let op = operator(&state, &headers).await?;
    let Query(q) = q.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let group = op.visible_group().map(str::to_owned);
    Ok(Json(state.store.audit_for(limit, group).await?).into_response())
}

/// Secret references (`${env:NAME}`, `${file:/path}`) are resolved on the gateway, where the
/// secrets live; the control plane usually does not have them, so "not set" / "cannot read" for a
/// secret says nothing about the config and must not block a publish. Syntax errors in a
/// reference are still reported. (Matches the messages of `tollgate_config::SecretError`.)
fn gateway_side_secret(message: &str) -> bool {
    (message.starts_with("environment variable ") && message.ends_with(" is not set"))
        || message.starts_with("cannot read secret file ")
}

/// The OpenAPI 3.1 description of this API (hand-written; tests/server.rs checks every documented
/// route exists and the schemas' fields match the wire types).
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// Liveness probe: the process serves HTTPS (no token, no database).
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness probe: 200 while the database answers, 503 otherwise (no token needed).
async fn readyz(State(st): St) -> Response {
    match st.store.operator_count().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: the database is unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

async fn openapi() -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn bad_json(e: JsonRejection) -> Fail {
    Fail::new(e.status(), "bad_request", e.body_text())
}

fn bad_query(e: QueryRejection) -> Fail {
    Fail::new(e.status(), "bad_request", e.body_text())
}

fn internal(e: impl std::fmt::Display) -> Fail {
    tracing::error!(error = %e, "control plane internal error");
    Fail::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error (see the control plane log)",
    )
}
