//! Alert rules evaluated on the control plane from stored fleet usage, with webhook
//! notifications (JSON with a Slack-compatible `text` field).
//!
//! Kinds (all over the last `window_secs`, for one group or every group, optionally one API or
//! consumer): `error_rate` (errors / requests, when at least `min_requests`), `latency_p99`
//! (ms, from the merged latency buckets), `quota` (highest `used / quota` of any limit key),
//! `dlp` (DLP findings), `gateway_offline` (seconds since the quietest non-revoked gateway
//! was last seen). A rule fires when the value exceeds `threshold`.
//!
//! De-duplication and cooldown: a rule notifies when it starts firing, then at most once per
//! `cooldown_secs` while it keeps firing (a reminder), and once when it resolves. A webhook
//! that fails leaves the state unchanged, so the next evaluation tries again; the error is
//! shown on the rule. Every notification is written to the audit log (`alert.firing`,
//! `alert.resolved`).
//!
//! Automated action (optional, per rule): `{"roll_group_to": N}` — when the rule starts firing,
//! the rule's group is rolled to config version N (published as a new, higher version carrying
//! N's configuration, exactly like an operator's restore), audited as `alert.action` with the
//! version that was serving before. `POST /v1/alerts/{id}/revert` (admin) restores that
//! version and clears the action; a rule whose action is applied does not apply it again.
//! Evaluation runs every `TOLLGATE_CP_ALERT_INTERVAL` seconds (default
//! 30) on every replica; with PostgreSQL several replicas may each notify once per transition.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::{Fail, admin, operator, require_group};
use super::pg::pg_err;
use super::store::{Store, StoreError};
use super::usage::{EventQuery, P, UsageQuery, pg_params, pg_refs, render, sqlite_params};

/// An alert rule (`POST /v1/alerts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    /// Only this group; absent = every group.
    #[serde(default)]
    pub group: Option<String>,
    /// `error_rate`, `latency_p99`, `quota`, `dlp` or `gateway_offline`.
    pub kind: String,
    /// Fires when the value is above this (a fraction for `error_rate` and `quota`, ms for
    /// `latency_p99`, a count for `dlp`, seconds for `gateway_offline`).
    pub threshold: f64,
    #[serde(default = "default_window")]
    pub window_secs: u64,
    #[serde(default)]
    pub api: Option<String>,
    #[serde(default)]
    pub consumer: Option<String>,
    /// `error_rate` and `latency_p99` stay quiet below this many requests in the window.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Where notifications are POSTed (https, or http to a loopback host).
    pub webhook: String,
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: u64,
    /// Automated action when the rule starts firing (needs `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AlertAction>,
}

/// An automated action of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertAction {
    /// Roll the rule's group to this config version (as a new version with its text).
    pub roll_group_to: u64,
}

/// What an applied action changed, so it can be reverted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionState {
    /// The group's version before the action.
    pub previous_version: u64,
    /// The version the action published.
    pub applied_version: u64,
    pub applied_at_ms: u64,
}

impl AlertRule {
    /// The rule as shown in listings and the audit log: a webhook URL often is the secret
    /// (Slack, Teams), so only its scheme and host are shown.
    pub fn redacted(&self) -> AlertRule {
        let mut r = self.clone();
        r.webhook = match r.webhook.parse::<http::Uri>() {
            Ok(u) => format!(
                "{}://{}/***",
                u.scheme_str().unwrap_or("https"),
                u.authority().map_or("", |a| a.as_str())
            ),
            Err(_) => "***".into(),
        };
        r
    }
}

fn default_window() -> u64 {
    300
}
fn default_min_requests() -> u64 {
    10
}
fn default_cooldown() -> u64 {
    3600
}

const KINDS: [&str; 5] = [
    "error_rate",
    "latency_p99",
    "quota",
    "dlp",
    "gateway_offline",
];

/// A rule with its state (`GET /v1/alerts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertInfo {
    pub rule: AlertRule,
    pub firing: bool,
    pub last_value: Option<f64>,
    pub last_notified_ms: u64,
    pub last_evaluated_ms: u64,
    pub last_error: Option<String>,
    /// Set while the rule's automated action is applied (not yet reverted).
    #[serde(default)]
    pub action_state: Option<ActionState>,
}

/// Runs statements in one transaction; returns each one's affected row count.
async fn exec(store: &Store, stmts: Vec<(&'static str, Vec<P>)>) -> Result<Vec<u64>, StoreError> {
    match store {
        Store::Sqlite(s) => {
            s.run(move |c| {
                let tx = c.transaction()?;
                let mut out = Vec::new();
                for (sql, p) in &stmts {
                    out.push(tx.execute(
                        &render(sql, false),
                        rusqlite::params_from_iter(sqlite_params(p)),
                    )? as u64);
                }
                tx.commit()?;
                Ok(out)
            })
            .await
        }
        Store::Postgres(pg) => {
            let mut guard = pg.client().await?;
            let c = guard
                .as_mut()
                .ok_or_else(|| StoreError::Backend("no connection".into()))?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let mut out = Vec::new();
            for (sql, p) in &stmts {
                let b = pg_params(p);
                out.push(
                    tx.execute(&render(sql, true), &pg_refs(&b))
                        .await
                        .map_err(pg_err)?,
                );
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(out)
        }
    }
}

const SELECT_RULES: &str =
    "SELECT spec, CAST(firing AS TEXT), last_value, CAST(last_notified_ms AS TEXT),
        CAST(last_evaluated_ms AS TEXT), last_error, action_state FROM alert_rules ORDER BY name";

fn info(cols: [Option<String>; 7]) -> Option<AlertInfo> {
    let [spec, firing, value, notified, evaluated, error, action] = cols;
    let num = |s: &Option<String>| {
        s.as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(AlertInfo {
        rule: serde_json::from_str(spec.as_deref()?).ok()?,
        firing: num(&firing) != 0,
        last_value: value.as_deref().and_then(|v| v.parse().ok()),
        last_notified_ms: num(&notified),
        last_evaluated_ms: num(&evaluated),
        last_error: error,
        action_state: action.as_deref().and_then(|a| serde_json::from_str(a).ok()),
    })
}

impl Store {
    pub async fn alerts(&self) -> Result<Vec<AlertInfo>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.run(|c| {
                    let mut st = c.prepare(SELECT_RULES)?;
                    let rows = st.query_map([], |r| {
                        Ok([
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ])
                    })?;
                    let rows = rows.collect::<Result<Vec<_>, _>>()?;
                    Ok(rows.into_iter().filter_map(info).collect())
                })
                .await
            }
            Store::Postgres(pg) => {
                let guard = pg.client().await?;
                let c = guard
                    .as_ref()
                    .ok_or_else(|| StoreError::Backend("no connection".into()))?;
                let rows = c.query(SELECT_RULES, &[]).await.map_err(pg_err)?;
                Ok(rows
                    .iter()
                    .filter_map(|r| {
                        info([
                            r.get(0),
                            r.get(1),
                            r.get(2),
                            r.get(3),
                            r.get(4),
                            r.get(5),
                            r.get(6),
                        ])
                    })
                    .collect())
            }
        }
    }

    pub async fn create_alert(&self, rule: AlertRule, actor: String) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&rule).map_err(|e| StoreError::Worker(e.to_string()))?;
        let now = crate::server::unix_now_ms() as i64;
        let group = rule.group.clone().map_or(P::N, P::S);
        let r =
            exec(
                self,
                vec![
                (
                    "INSERT INTO alert_rules (name, group_name, spec, created_by, created_at_ms)
                     VALUES ({1}, {2}, {3}, {4}, {5}) ON CONFLICT (name) DO NOTHING",
                    vec![
                        P::S(rule.name.clone()),
                        group.clone(),
                        P::S(spec),
                        P::S(actor.clone()),
                        P::I(now),
                    ],
                ),
                audit_stmt(&actor, "alert.create", &rule.name, &rule.redacted(), group, now),
            ],
            )
            .await?;
        if r.first() == Some(&0) {
            return Err(StoreError::Conflict(format!(
                "alert rule {:?} already exists",
                rule.name
            )));
        }
        Ok(())
    }

    pub async fn delete_alert(&self, name: String, actor: String) -> Result<(), StoreError> {
        let now = crate::server::unix_now_ms() as i64;
        let r = exec(
            self,
            vec![
                (
                    "DELETE FROM alert_rules WHERE name = {1}",
                    vec![P::S(name.clone())],
                ),
                audit_stmt(
                    &actor,
                    "alert.delete",
                    &name,
                    &serde_json::json!({}),
                    P::N,
                    now,
                ),
            ],
        )
        .await?;
        if r.first() == Some(&0) {
            return Err(StoreError::NotFound(format!("no alert rule {name:?}")));
        }
        Ok(())
    }

    /// Sets (or with `None` clears) the applied action, with its audit record.
    async fn alert_action(
        &self,
        rule: &AlertRule,
        state: Option<&ActionState>,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let now = crate::server::unix_now_ms() as i64;
        let json = state.map_or(P::N, |s| {
            P::S(serde_json::to_string(s).unwrap_or_else(|_| "null".into()))
        });
        let group = rule.group.clone().map_or(P::N, P::S);
        exec(
            self,
            vec![
                (
                    "UPDATE alert_rules SET action_state = {2} WHERE name = {1}",
                    vec![P::S(rule.name.clone()), json],
                ),
                audit_stmt(actor, action, &rule.name, &detail, group, now),
            ],
        )
        .await
        .map(|_| ())
    }

    /// Records one evaluation; with `notified = Some((state, detail))` also the notification
    /// time and its audit record.
    async fn alert_evaluated(
        &self,
        rule: &AlertRule,
        firing: bool,
        value: f64,
        notified: Option<(&'static str, serde_json::Value)>,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let now = crate::server::unix_now_ms() as i64;
        let mut stmts = vec![(
            "UPDATE alert_rules SET firing = {2}, last_value = {3}, last_evaluated_ms = {4},
                 last_error = {5},
                 last_notified_ms = CASE WHEN CAST({6} AS BIGINT) = 1 THEN {4} ELSE last_notified_ms END
             WHERE name = {1}",
            vec![
                P::S(rule.name.clone()),
                P::I(i64::from(firing)),
                P::S(format!("{value}")),
                P::I(now),
                error.map_or(P::N, P::S),
                P::I(i64::from(notified.is_some())),
            ],
        )];
        if let Some((action, detail)) = notified {
            let group = rule.group.clone().map_or(P::N, P::S);
            stmts.push(audit_stmt(
                "alerts", action, &rule.name, &detail, group, now,
            ));
        }
        exec(self, stmts).await.map(|_| ())
    }
}

fn audit_stmt(
    actor: &str,
    action: &str,
    target: &str,
    detail: &impl Serialize,
    group: P,
    now: i64,
) -> (&'static str, Vec<P>) {
    (
        "INSERT INTO audit (at_ms, actor, action, target, detail, group_name)
         VALUES ({1}, {2}, {3}, {4}, {5}, {6})",
        vec![
            P::I(now),
            P::S(actor.to_owned()),
            P::S(action.to_owned()),
            P::S(target.to_owned()),
            P::S(serde_json::to_string(detail).unwrap_or_else(|_| "{}".into())),
            group,
        ],
    )
}

// ---- evaluation ----

/// The rule's current value.
async fn value(store: &Store, r: &AlertRule) -> Result<f64, StoreError> {
    let now = crate::server::unix_now();
    let q = UsageQuery {
        group: r.group.clone(),
        api: r.api.clone(),
        consumer: r.consumer.clone(),
        from: now.saturating_sub(r.window_secs.max(60)),
        to: now + 60,
        step: 0,
        ..Default::default()
    };
    Ok(match r.kind.as_str() {
        "error_rate" | "latency_p99" => {
            let pts = store.usage(q).await?;
            let requests: u64 = pts.iter().map(|p| p.requests).sum();
            if requests < r.min_requests.max(1) {
                0.0
            } else if r.kind == "error_rate" {
                pts.iter().map(|p| p.errors).sum::<u64>() as f64 / requests as f64
            } else {
                pts.first().map_or(0.0, |p| p.p99_ms)
            }
        }
        "quota" => store
            .usage_limits(q)
            .await?
            .iter()
            .filter(|p| p.quota > 0)
            .map(|p| p.used as f64 / p.quota as f64)
            .fold(0.0, f64::max),
        "dlp" => store
            .usage_events(EventQuery {
                group: q.group,
                kind: Some("dlp".into()),
                api: q.api,
                consumer: q.consumer,
                from: q.from,
                to: q.to,
                limit: 1000,
                ..Default::default()
            })
            .await?
            .iter()
            .map(|e| e.count)
            .sum::<u64>() as f64,
        "gateway_offline" => store
            .gateways()
            .await?
            .iter()
            .filter(|g| !g.revoked && r.group.as_deref().is_none_or(|x| x == g.group))
            .map(|g| now.saturating_sub(g.last_seen) as f64)
            .fold(0.0, f64::max),
        _ => 0.0,
    })
}

/// POSTs one notification; `Err` carries a message for the rule's `last_error`.
async fn notify(url: &str, body: &serde_json::Value) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| "webhook is not a URL".to_owned())?;
    let client = crate::agent::client::Client::new(url, None).map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let reply = client
        .call(
            http::Method::POST,
            path,
            None,
            Some(body.to_string().into_bytes()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(format!("webhook answered HTTP {}", reply.status.as_u16()))
    }
}

/// Applies a rule's automated action (when it has one and it is not applied already).
async fn act(state: &AppState, a: &AlertInfo) {
    let r = &a.rule;
    let (Some(action), Some(group)) = (&r.action, &r.group) else {
        return;
    };
    if a.action_state.is_some() {
        return;
    }
    let actor = format!("alert:{}", r.name);
    let previous = match state.store.rollout_state(group.clone()).await {
        Ok((v, _)) => v,
        Err(e) => {
            tracing::error!(alert.rule = %r.name, error = %e, "alert action: cannot read the group's version");
            return;
        }
    };
    match super::rollout::restore(state, &actor, group, action.roll_group_to).await {
        Ok(applied) => {
            let st = ActionState {
                previous_version: previous,
                applied_version: applied,
                applied_at_ms: crate::server::unix_now_ms(),
            };
            let detail = serde_json::json!({"group": group, "roll_group_to": action.roll_group_to,
                "previous_version": previous, "applied_version": applied});
            tracing::warn!(alert.rule = %r.name, group.name = %group, config.version = applied, config.previous_version = previous, "alert action: group rolled to version {}", action.roll_group_to);
            if let Err(e) = state
                .store
                .alert_action(r, Some(&st), &actor, "alert.action", detail)
                .await
            {
                tracing::error!(alert.rule = %r.name, error = %e, "alert action applied but not recorded");
            }
        }
        Err(e) => {
            tracing::error!(alert.rule = %r.name, error = %e, "alert action failed");
        }
    }
}

/// Reverts a rule's applied action: restores the version that served before it.
pub(crate) async fn revert(state: &AppState, name: &str, actor: &str) -> Result<u64, StoreError> {
    let a = state
        .store
        .alerts()
        .await?
        .into_iter()
        .find(|a| a.rule.name == name)
        .ok_or_else(|| StoreError::NotFound(format!("no alert rule {name:?}")))?;
    let (Some(st), Some(group)) = (&a.action_state, &a.rule.group) else {
        return Err(StoreError::State(format!(
            "alert rule {name:?} has no applied action to revert"
        )));
    };
    let version = super::rollout::restore(state, actor, group, st.previous_version).await?;
    let detail = serde_json::json!({"group": group, "restored_version": st.previous_version,
        "new_version": version, "reverted_version": st.applied_version});
    state
        .store
        .alert_action(&a.rule, None, actor, "alert.action_revert", detail)
        .await?;
    Ok(version)
}

/// Evaluates every rule once (and applies the automated action of a rule that starts firing).
pub(crate) async fn evaluate(app: &AppState) -> Result<(), StoreError> {
    let store = &app.store;
    let now_ms = crate::server::unix_now_ms();
    for a in store.alerts().await? {
        let r = &a.rule;
        let v = match value(store, r).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(alert.rule = %r.name, error = %e, "cannot evaluate alert rule");
                continue;
            }
        };
        let firing = v > r.threshold;
        let due = a.last_notified_ms + r.cooldown_secs.saturating_mul(1000) <= now_ms;
        let state = match (a.firing, firing) {
            (false, true) => Some("firing"),
            (true, true) if due => Some("firing"),
            (true, false) => Some("resolved"),
            _ => None,
        };
        let Some(state) = state else {
            store.alert_evaluated(r, firing, v, None, None).await?;
            continue;
        };
        let scope = r.group.as_deref().unwrap_or("every group");
        let text = match state {
            "firing" => format!(
                "[tollgate] FIRING {}: {} is {v:.3} (threshold {}) on {scope}",
                r.name, r.kind, r.threshold
            ),
            _ => format!(
                "[tollgate] resolved {}: {} is {v:.3} (threshold {}) on {scope}",
                r.name, r.kind, r.threshold
            ),
        };
        let body = serde_json::json!({
            "text": text, "rule": r.name, "kind": r.kind, "state": state, "group": r.group,
            "api": r.api, "consumer": r.consumer, "value": v, "threshold": r.threshold,
            "at_ms": now_ms,
        });
        if !a.firing && firing {
            act(app, &a).await;
        }
        match notify(&r.webhook, &body).await {
            Ok(()) => {
                tracing::info!(alert.rule = %r.name, alert.state = state, alert.value = v, "alert notification sent");
                let action = if state == "firing" {
                    "alert.firing"
                } else {
                    "alert.resolved"
                };
                store
                    .alert_evaluated(r, firing, v, Some((action, body)), None)
                    .await?;
            }
            Err(e) => {
                tracing::warn!(alert.rule = %r.name, error = %e, "alert webhook failed; retrying at the next evaluation");
                // The firing state is left as it was, so the transition is notified again.
                store.alert_evaluated(r, a.firing, v, None, Some(e)).await?;
            }
        }
    }
    Ok(())
}

/// Key of the PostgreSQL session advisory lock that elects the replica evaluating alerts
/// (`pg_try_advisory_lock`; an arbitrary constant, "tg-alert" in ASCII).
const ALERT_LOCK_KEY: i64 = 0x7467_2d61_6c65_7274;

/// With PostgreSQL, several control-plane replicas share the rules: only the replica holding
/// the session advisory lock [`ALERT_LOCK_KEY`] on its own connection evaluates (and notifies).
/// It keeps the lock as long as that connection lives; the others try again every round, so
/// when the holder stops (its connection closes, PostgreSQL releases the lock) another one
/// takes over at its next round. SQLite (one process) always evaluates.
#[derive(Default)]
struct Leader {
    conn: Option<tokio_postgres::Client>,
    held: bool,
}

impl Leader {
    /// Whether this replica evaluates this round.
    async fn elect(&mut self, store: &Store) -> Result<bool, StoreError> {
        let Store::Postgres(pg) = store else {
            return Ok(true);
        };
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            if self.held {
                tracing::warn!(
                    "alert evaluation: lost the database connection holding the alert lock"
                );
            }
            self.held = false;
            self.conn = Some(pg.dedicated().await?);
        }
        let Some(c) = self.conn.as_ref() else {
            return Ok(false);
        };
        let r = if self.held {
            // Still the holder while this session is alive (cheap liveness check).
            c.simple_query("SELECT 1").await.map(|_| true)
        } else {
            c.query_one("SELECT pg_try_advisory_lock($1)", &[&ALERT_LOCK_KEY])
                .await
                .and_then(|row| row.try_get::<_, bool>(0))
        };
        match r {
            Ok(held) => {
                if held && !self.held {
                    tracing::info!(
                        "alert evaluation: this replica took the alert lock and evaluates the rules"
                    );
                }
                self.held = held;
                Ok(held)
            }
            Err(e) => {
                self.held = false;
                self.conn = None;
                Err(pg_err(e))
            }
        }
    }
}

/// Starts the periodic evaluation; it ends when the server's state is dropped.
pub(super) fn spawn(state: Weak<AppState>) {
    let every = std::env::var("TOLLGATE_CP_ALERT_INTERVAL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .map_or(Duration::from_secs(30), Duration::from_secs_f64);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leader = Leader::default();
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            match leader.elect(&state.store).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(
                        "alert evaluation skipped: another replica holds the alert lock"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "alert evaluation skipped: cannot take the alert lock");
                    continue;
                }
            }
            if let Err(e) = evaluate(&state).await {
                tracing::warn!(error = %e, "alert evaluation failed");
            }
        }
    });
}

// ---- HTTP ----

type St = State<Arc<AppState>>;

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/alerts", get(list).post(create))
        .route("/v1/alerts/{id}", delete(remove))
        .route("/v1/alerts/{id}/revert", post(revert_action))
}

async fn list(State(state): St, headers: HeaderMap) -> Result<Response, Fail> {
    let op = operator(&state, &headers).await?;
    let mut rules = state.store.alerts().await?;
    // A scoped viewer sees only its own group's rules (not fleet-wide ones).
    if let Some(g) = op.visible_group() {
        rules.retain(|a| a.rule.group.as_deref() == Some(g));
    }
    for a in &mut rules {
        a.rule = a.rule.redacted();
    }
    Ok(Json(rules).into_response())
}

async fn create(
    State(state): St,
    headers: HeaderMap,
    body: Result<Json<AlertRule>, JsonRejection>,
) -> Result<StatusCode, Fail> {
    let op = admin(&state, &headers).await?;
    let Json(rule) = body.map_err(|e| Fail::new(e.status(), "bad_request", e.body_text()))?;
    let bad = |m: String| Fail::new(StatusCode::BAD_REQUEST, "bad_request", m);
    if rule.name.is_empty() || rule.name.len() > 63 {
        return Err(bad("name must be 1-63 characters".into()));
    }
    if !KINDS.contains(&rule.kind.as_str()) {
        return Err(bad(format!(
            "kind {:?}: one of {}",
            rule.kind,
            KINDS.join(", ")
        )));
    }
    if !rule.threshold.is_finite() {
        return Err(bad("threshold must be a number".into()));
    }
    crate::agent::client::Client::new(&rule.webhook, None)
        .map_err(|e| bad(format!("webhook: {e}")))?;
    if rule.action.is_some() && rule.group.is_none() {
        return Err(bad("an action needs the rule's group".into()));
    }
    if let Some(g) = &rule.group {
        require_group(&op, g)?;
        if !state.store.group_exists(g.clone()).await? {
            return Err(Fail::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no group {g:?}"),
            ));
        }
    }
    state.store.create_alert(rule, op.name).await?;
    Ok(StatusCode::CREATED)
}

async fn remove(
    State(state): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, Fail> {
    let op = admin(&state, &headers).await?;
    state.store.delete_alert(name, op.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revert_action(
    State(state): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Fail> {
    let op = admin(&state, &headers).await?;
    let version = revert(&state, &name, &op.name).await?;
    Ok(Json(serde_json::json!({ "version": version })).into_response())
}
