//! Fleet: every visible group with its gateways — health, version applied vs assigned (drift),
//! canary membership, last seen and last error.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use tollgate_ui::html::{self, Tone, esc, pill, stat, stats};

use super::{Ctx, UiError, group_select, offline, render, require_group, visible_groups};
use crate::protocol::{GatewayInfo, Rollout};
use crate::server::{AppState, unix_now};

#[derive(serde::Deserialize)]
pub(super) struct FleetQuery {
    group: Option<String>,
}

fn labels(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("<span class=\"tag\">{}={}</span>", esc(k), esc(v)))
        .collect()
}

/// The health pill of one gateway.
pub(super) fn health(now: u64, g: &GatewayInfo) -> String {
    if g.revoked {
        pill(Tone::Muted, "revoked")
    } else if offline(now, g.last_seen) {
        pill(Tone::Bad, "offline")
    } else if !g.healthy {
        pill(Tone::Warn, "unhealthy")
    } else {
        pill(Tone::Ok, "healthy")
    }
}

pub(super) fn rollout_pill(r: Option<&Rollout>) -> String {
    match r {
        Some(r) if r.state == "canary" => pill(
            Tone::Info,
            &format!("canary v{} · {} %", r.version, r.canary_percent),
        ),
        Some(r) if r.state == "rolled_back" => {
            pill(Tone::Warn, &format!("v{} rolled back", r.version))
        }
        Some(r) => pill(Tone::Ok, &format!("v{} {}", r.version, r.state)),
        None => pill(Tone::Muted, "no rollout"),
    }
}

pub(super) async fn page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<FleetQuery>,
) -> Result<Response, UiError> {
    let ctx = Ctx::from_headers(&state, &headers, "/ui/fleet").await?;
    let only = q.group.filter(|g| !g.is_empty());
    if let Some(g) = &only {
        require_group(&ctx.op, g)?;
    }
    let groups = visible_groups(&state, &ctx.op).await?;
    let mut gateways = state.store.gateways().await?;
    gateways.retain(|g| ctx.op.sees_group(&g.group));
    let active = state.store.active_rollouts().await?;
    for g in gateways.iter_mut() {
        crate::server::rollout::annotate(g, active.iter().find(|r| r.group == g.group));
    }
    let now = unix_now();
    let live: Vec<&GatewayInfo> = gateways.iter().filter(|g| !g.revoked).collect();
    let healthy = live
        .iter()
        .filter(|g| g.healthy && !offline(now, g.last_seen))
        .count();
    let off = live.iter().filter(|g| offline(now, g.last_seen)).count();
    let drift = live.iter().filter(|g| g.drift).count();
    let mut body = String::with_capacity(8192);
    body.push_str(&stats(&[
        stat("Groups", &groups.len().to_string(), ""),
        stat(
            "Gateways",
            &live.len().to_string(),
            &format!("{} revoked", gateways.len() - live.len()),
        ),
        stat("Healthy", &healthy.to_string(), &format!("{off} offline")),
        stat("Drift", &drift.to_string(), "applied ≠ assigned"),
    ]));
    let _ = write!(
        body,
        "<form class=\"toolbar\" method=\"get\" action=\"/ui/fleet\">{}\
         <button class=\"btn secondary\">Show</button><span class=\"spacer\"></span>\
         <input class=\"filter\" type=\"search\" placeholder=\"Filter gateways…\" data-filter=\"table.fleet tbody tr\" aria-label=\"Filter gateways\"></form>",
        group_select(&groups, only.as_deref(), ctx.op.visible_group().is_none())
    );
    if groups.is_empty() {
        body.push_str(&html::card(
            "Gateways",
            &html::empty(
                "No groups yet",
                "Create one with `tollgate cp groups create NAME`, then enroll gateways with a token from `tollgate cp tokens create NAME`.",
            ),
        ));
        return Ok(render(&ctx, "fleet", "Fleet", &body));
    }
    for group in groups
        .iter()
        .filter(|g| only.as_deref().is_none_or(|o| o == g.name))
    {
        let members: Vec<&GatewayInfo> =
            gateways.iter().filter(|g| g.group == group.name).collect();
        let rollout = active.iter().find(|r| r.group == group.name);
        let mut t = String::new();
        if members.is_empty() {
            t.push_str(&html::empty(
                "No gateways in this group",
                &format!(
                    "Create an enrollment token with `tollgate cp tokens create {}` and start a gateway with --control-plane and --enroll-token.",
                    group.name
                ),
            ));
        } else {
            t.push_str("<table class=\"fleet\" data-group=\"");
            t.push_str(&esc(&group.name).to_string());
            t.push_str("\"><thead><tr><th>Gateway</th><th>Labels</th><th>Health</th><th class=\"num\">Applied</th><th class=\"num\">Assigned</th><th>Drift</th><th>Last seen</th><th>Last error</th></tr></thead><tbody>");
            for g in members {
                let drift = if g.revoked {
                    String::new()
                } else if g.drift {
                    pill(Tone::Warn, "drift")
                } else {
                    pill(Tone::Ok, "in sync")
                };
                let canary = if g.canary {
                    " <span class=\"tag\">canary</span>"
                } else {
                    ""
                };
                let _ = write!(
                    t,
                    "<tr class=\"gateway\" data-gateway=\"{id}\"><td><strong>{name}</strong>{canary}<div class=\"muted small mono\">{id}</div></td>\
                     <td>{labels}</td><td>{health}</td><td class=\"num applied\">v{applied}</td><td class=\"num\">v{assigned}</td><td>{drift}</td>\
                     <td><time data-ago datetime=\"{seen}\" title=\"{seen_abs}\">{ago}</time></td><td class=\"small\">{err}</td></tr>",
                    id = esc(&g.id),
                    name = esc(&g.name),
                    labels = labels(&g.labels),
                    health = health(now, g),
                    applied = g.applied_version,
                    assigned = g.assigned_version,
                    seen = g.last_seen,
                    seen_abs = esc(&html::fmt_time(g.last_seen)),
                    ago = esc(&html::fmt_ago(now, g.last_seen)),
                    err = esc(g.last_error.as_deref().unwrap_or("")),
                );
            }
            t.push_str("</tbody></table>");
        }
        let _ = write!(
            body,
            "<section class=\"card group\" id=\"group-{gid}\"><h2><a href=\"/ui/config/{gurl}\">{gname}</a> {labels}\
             <span class=\"pill muted\">group v{ver}</span>{rollout}<span class=\"aside\"><a href=\"/ui/traffic?group={gurl}\">Traffic →</a></span></h2>{t}</section>",
            gid = esc(&group.name),
            gurl = html::url(&group.name),
            gname = esc(&group.name),
            labels = labels(&group.labels),
            ver = group.assigned_version,
            rollout = rollout_pill(rollout),
        );
    }
    Ok(render(&ctx, "fleet", "Fleet", &body))
}
