//! Audit: what changed (config publishes, rollouts, enrollments, revocations, tokens) and what
//! the fleet refused (denials with their reason, DLP hits, limit breaches).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use tollgate_ui::html::{self, Tone, esc, pill};

use super::usage_data::{self, Event};
use super::{Ctx, UiError, group_select, render, require_group, visible_groups};
use crate::server::AppState;

#[derive(serde::Deserialize)]
pub(super) struct AuditQuery {
    group: Option<String>,
}

fn action_tone(action: &str) -> Tone {
    if action.contains("rollback") || action.contains("revoke") {
        Tone::Warn
    } else if action.starts_with("config") || action.starts_with("rollout") {
        Tone::Info
    } else {
        Tone::Muted
    }
}

fn events_table(id: &str, events: &[Event]) -> String {
    if events.is_empty() {
        return html::empty(
            "Nothing recorded",
            "Gateways upload these events with their usage.",
        );
    }
    let mut t = format!(
        "<table id=\"{}\"><thead><tr><th>Last seen</th><th>Group</th><th>Gateway</th><th>API</th><th>Consumer</th><th>Reason</th><th class=\"num\">Count</th></tr></thead><tbody>",
        esc(id)
    );
    for e in events {
        let _ = write!(
            t,
            "<tr><td class=\"when\">{}</td><td>{}</td><td class=\"mono small\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            esc(&html::fmt_time(e.last_at_ms / 1000)),
            esc(&e.group),
            esc(&e.gateway),
            esc(&e.api),
            esc(&e.consumer),
            esc(&e.reason),
            e.count
        );
    }
    t.push_str("</tbody></table>");
    t
}

pub(super) async fn page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, UiError> {
    let ctx = Ctx::from_headers(&state, &headers, "/ui/audit").await?;
    let asked = q.group.filter(|g| !g.is_empty());
    if let Some(g) = &asked {
        require_group(&ctx.op, g)?;
    }
    let group = asked.or_else(|| ctx.op.visible_group().map(str::to_owned));
    let groups = visible_groups(&state, &ctx.op).await?;
    let mut body = format!(
        "<form class=\"toolbar\" method=\"get\" action=\"/ui/audit\">{}<button class=\"btn secondary\">Show</button>\
         <span class=\"spacer\"></span><input class=\"filter\" type=\"search\" placeholder=\"Filter…\" data-filter=\"#changes tbody tr\" aria-label=\"Filter changes\"></form>",
        group_select(&groups, group.as_deref(), ctx.op.visible_group().is_none())
    );
    let denials = usage_data::events(&state, group.clone(), Some("deny"), 50).await?;
    let dlp = usage_data::events(&state, group.clone(), Some("dlp"), 50).await?;
    let limits = usage_data::events(&state, group.clone(), Some("limit"), 50).await?;
    match (denials, dlp, limits) {
        (Some(d), Some(x), Some(l)) => {
            let _ = write!(
                body,
                "{}{}{}",
                html::card_id("denials", "Recent denials", &events_table("denials-table", &d)),
                html::card_id("dlp", "DLP hits", &events_table("dlp-table", &x)),
                html::card_id("limit-breaches", "Limit breaches (429)", &events_table("limits-table", &l)),
            );
        }
        _ => body.push_str(&html::card_id(
            "denials",
            "Recent denials and DLP hits",
            &html::empty(
                "Fleet events are not available",
                "This control plane does not store gateway audit events yet; each gateway's access log has them.",
            ),
        )),
    }
    let entries = state.store.audit_for(200, group.clone()).await?;
    let mut t = String::new();
    if entries.is_empty() {
        t.push_str(&html::empty(
            "No changes recorded",
            "Every change made through the API, the CLI or this dashboard is listed here.",
        ));
    } else {
        t.push_str("<table id=\"changes\"><thead><tr><th>When</th><th>Who</th><th>Action</th><th>Target</th><th>Detail</th></tr></thead><tbody>");
        for e in &entries {
            let detail = serde_json::to_string(&e.detail).unwrap_or_default();
            let _ = write!(
                t,
                "<tr data-action=\"{a}\"><td class=\"when\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono small detail\">{}</td></tr>",
                esc(&html::fmt_time(e.at_ms / 1000)),
                esc(&e.actor),
                pill(action_tone(&e.action), &e.action),
                esc(&e.target),
                esc(&detail),
                a = esc(&e.action),
            );
        }
        t.push_str("</tbody></table>");
    }
    body.push_str(&html::card_id(
        "config-changes",
        "Config and fleet changes",
        &t,
    ));
    Ok(render(&ctx, "audit", "Audit", &body))
}
