//! Config: a group's versions, the line diff between any two of them, the rollout state and
//! (admins only) the rollout actions: start a canary rollout, promote, roll back.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use tollgate_ui::html::{self, Tone, csrf_field, esc, pill};

use super::{Ctx, UiError, redirect, render, require_group, visible_groups};
use crate::protocol::StartRollout;
use crate::server::AppState;

pub(super) async fn index(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let ctx = Ctx::from_headers(&state, &headers, "/ui/config").await?;
    let groups = visible_groups(&state, &ctx.op).await?;
    if let [only] = groups.as_slice() {
        return Ok(redirect(&format!("/ui/config/{}", html::url(&only.name))));
    }
    let active = state.store.active_rollouts().await?;
    let body = if groups.is_empty() {
        html::card(
            "Groups",
            &html::empty(
                "No groups yet",
                "Create one with `tollgate cp groups create NAME` and publish a config with `tollgate cp configs publish NAME FILE`.",
            ),
        )
    } else {
        let mut t = String::from(
            "<table id=\"groups-table\"><thead><tr><th>Group</th><th class=\"num\">Group version</th><th>Rollout</th><th>Created</th></tr></thead><tbody>",
        );
        for g in &groups {
            let _ = write!(
                t,
                "<tr><td><a href=\"/ui/config/{}\">{}</a></td><td class=\"num\">v{}</td><td>{}</td><td>{}</td></tr>",
                html::url(&g.name),
                esc(&g.name),
                g.assigned_version,
                super::fleet::rollout_pill(active.iter().find(|r| r.group == g.name)),
                esc(&html::fmt_time(g.created_at)),
            );
        }
        t.push_str("</tbody></table>");
        html::card("Groups", &t)
    };
    Ok(render(&ctx, "config", "Config", &body))
}

#[derive(serde::Deserialize)]
pub(super) struct DiffQuery {
    from: Option<u64>,
    to: Option<u64>,
    /// A flash message after an action (`promoted`, `rolled_back`, `started`).
    done: Option<String>,
    /// Show this version's YAML.
    view: Option<u64>,
}

fn version_select(name: &str, label: &str, versions: &[u64], current: u64) -> String {
    let mut out = format!(
        "<label>{}<select name=\"{}\" id=\"diff-{}\">",
        esc(label),
        esc(name),
        esc(name)
    );
    for v in versions {
        let sel = if *v == current { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{v}\"{sel}>v{v}</option>");
    }
    out.push_str("</select></label>");
    out
}

pub(super) async fn page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(group): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, UiError> {
    let here = format!("/ui/config/{}", html::url(&group));
    let ctx = Ctx::from_headers(&state, &headers, &here).await?;
    require_group(&ctx.op, &group)?;
    let status = crate::server::rollout::status(&state, &group).await?;
    let versions = state.store.versions(group.clone()).await?;
    let mut body = String::with_capacity(16 * 1024);
    if let Some(done) = q.done.as_deref() {
        let msg = match done {
            "promoted" => "Promoted: every gateway of the group now gets the rollout's version.",
            "rolled_back" => {
                "Rolled back: the canaries return to the previous configuration (signed as a new version)."
            }
            "started" => "Rollout started: the canaries get the new version first.",
            _ => "",
        };
        if !msg.is_empty() {
            body.push_str(&html::notice(Tone::Ok, msg));
        }
    }

    // Rollout state and actions.
    let mut r = String::new();
    let _ = write!(
        r,
        "<dl class=\"kv\"><dt>Group version</dt><dd id=\"group-version\">v{}</dd>",
        status.group_version
    );
    match &status.rollout {
        Some(ro) => {
            let canaries = status.gateways.iter().filter(|g| {
                ro.state == "canary" && crate::server::rollout::is_canary(ro, &g.id, &g.labels)
            });
            let _ = write!(
                r,
                "<dt>Latest rollout</dt><dd id=\"rollout-state\" data-state=\"{state}\">{pill} v{ver} from v{base}</dd>\
                 <dt>Canary share</dt><dd>{pct} %{labels}</dd><dt>Canaries</dt><dd>{canaries}</dd>\
                 <dt>Started</dt><dd>{sby} · {sat}</dd><dt>Last change</dt><dd>{uby} · {uat}</dd>",
                state = esc(&ro.state),
                pill = super::fleet::rollout_pill(Some(ro)),
                ver = ro.version,
                base = ro.base_version,
                pct = ro.canary_percent,
                labels = if ro.canary_labels.is_empty() {
                    String::new()
                } else {
                    format!(
                        " of gateways labelled {}",
                        esc(&ro
                            .canary_labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(", "))
                    )
                },
                canaries = {
                    let names: Vec<String> = canaries.map(|g| esc(&g.name).to_string()).collect();
                    if names.is_empty() {
                        "–".to_owned()
                    } else {
                        names.join(", ")
                    }
                },
                sby = esc(&ro.started_by),
                sat = esc(&html::fmt_time(ro.started_at_ms / 1000)),
                uby = esc(&ro.updated_by),
                uat = esc(&html::fmt_time(ro.updated_at_ms / 1000)),
            );
            if let Some(rb) = ro.rollback_version {
                let _ = write!(
                    r,
                    "<dt>Rolled back as</dt><dd>v{rb} (the old configuration, signed again)</dd>"
                );
            }
        }
        None => r.push_str(
            "<dt>Latest rollout</dt><dd id=\"rollout-state\" data-state=\"none\">none</dd>",
        ),
    }
    r.push_str("</dl>");
    let in_progress = status
        .rollout
        .as_ref()
        .is_some_and(|ro| ro.state == "canary");
    if ctx.is_admin() {
        r.push_str("<div class=\"actions\" id=\"rollout-actions\">");
        if in_progress {
            let _ = write!(
                r,
                "<form method=\"post\" action=\"{here}/promote\" data-confirm=\"Give the rollout's version to every gateway of {g}?\">{csrf}\
                 <button class=\"btn\" id=\"promote\">Promote to all gateways</button></form>\
                 <form method=\"post\" action=\"{here}/rollback\" data-confirm=\"Return the canaries of {g} to the previous configuration?\">{csrf}\
                 <button class=\"btn danger\" id=\"rollback\">Roll back</button></form>",
                here = esc(&here),
                g = esc(&group),
                csrf = csrf_field(&ctx.csrf),
            );
        } else {
            let newer: Vec<u64> = versions
                .iter()
                .map(|v| v.version)
                .filter(|v| *v > status.group_version)
                .collect();
            if newer.is_empty() {
                r.push_str("<span class=\"muted small\">Publish a version without assigning it (<code>tollgate cp configs publish --no-assign</code> or <code>POST …/configs?assign=false</code>) to roll it out to a canary share first.</span>");
            } else {
                let _ = write!(
                    r,
                    "<form class=\"inline\" method=\"post\" action=\"{here}/rollout\" id=\"start-form\">{csrf}{sel}\
                     <label>Canary %<input type=\"number\" name=\"canary_percent\" min=\"1\" max=\"100\" value=\"20\" id=\"canary-percent\"></label>\
                     <label>Canary labels<input type=\"text\" name=\"canary_labels\" placeholder=\"ring=canary\" id=\"canary-labels\"></label>\
                     <button class=\"btn\" id=\"start-rollout\">Start rollout</button></form>",
                    here = esc(&here),
                    csrf = csrf_field(&ctx.csrf),
                    sel = version_select(
                        "version",
                        "Version",
                        &newer,
                        newer.last().copied().unwrap_or(0)
                    ),
                );
            }
        }
        r.push_str("</div>");
    }
    body.push_str(&html::card_id("rollout", "Rollout", &r));

    // Versions.
    let nums: Vec<u64> = versions.iter().map(|v| v.version).collect();
    let mut t = String::new();
    if versions.is_empty() {
        t.push_str(&html::empty(
            "No versions yet",
            &format!("Publish one with `tollgate cp configs publish {group} FILE`."),
        ));
    } else {
        t.push_str("<table id=\"versions\"><thead><tr><th>Version</th><th>Published</th><th>By</th><th>SHA-256</th><th>State</th><th></th></tr></thead><tbody>");
        for (i, v) in versions.iter().enumerate() {
            let state_pill = if v.version == status.group_version {
                pill(Tone::Ok, "group version")
            } else if status
                .rollout
                .as_ref()
                .is_some_and(|ro| ro.state == "canary" && ro.version == v.version)
            {
                pill(Tone::Info, "canary")
            } else if v.version > status.group_version {
                pill(Tone::Muted, "staged")
            } else {
                pill(Tone::Muted, "superseded")
            };
            // The previous version in the list (versions are listed newest first or oldest
            // first depending on the store; compare by number, not position).
            let prev = nums.iter().copied().filter(|n| *n < v.version).max();
            let diff = prev
                .map(|p| {
                    format!(
                        "<a href=\"{}?from={p}&amp;to={}#diff\">diff with v{p}</a>",
                        esc(&here),
                        v.version
                    )
                })
                .unwrap_or_default();
            let diff = format!(
                "<a href=\"{}?view={}#yaml\">view</a>{}{diff}",
                esc(&here),
                v.version,
                if diff.is_empty() { "" } else { " · " }
            );
            let _ = write!(
                t,
                "<tr data-version=\"{ver}\"><td><strong>v{ver}</strong></td><td>{at}</td><td>{by}</td><td class=\"mono small\">{sha}</td><td>{state_pill}</td><td>{diff}</td></tr>",
                ver = v.version,
                at = esc(&html::fmt_time(v.created_at_ms / 1000)),
                by = esc(&v.created_by),
                sha = esc(&v.sha256.chars().take(12).collect::<String>()),
            );
            let _ = i;
        }
        t.push_str("</tbody></table>");
    }
    body.push_str(&html::card_id("versions-card", "Versions", &t));

    // Diff between two versions (default: the two newest).
    if nums.len() >= 2 {
        let mut sorted = nums.clone();
        sorted.sort_unstable();
        let newest = sorted[sorted.len() - 1];
        let to = q.to.filter(|v| sorted.contains(v)).unwrap_or(newest);
        let from = q.from.filter(|v| sorted.contains(v)).unwrap_or_else(|| {
            sorted
                .iter()
                .copied()
                .filter(|n| *n < to)
                .max()
                .unwrap_or(to)
        });
        let old = state
            .store
            .version(group.clone(), from)
            .await?
            .map(|x| x.0)
            .unwrap_or_default();
        let new = state
            .store
            .version(group.clone(), to)
            .await?
            .map(|x| x.0)
            .unwrap_or_default();
        let lines = tollgate_ui::diff::diff_lines(&old, &new);
        let (adds, dels) = tollgate_ui::diff::stats(&lines);
        let mut d = format!(
            "<form class=\"toolbar\" method=\"get\" action=\"{}#diff\">{}{}<button class=\"btn secondary\" id=\"show-diff\">Compare</button>\
             <span class=\"spacer\"></span><span class=\"pill ok\" id=\"diff-adds\">+{adds}</span><span class=\"pill bad\" id=\"diff-dels\">−{dels}</span></form>",
            esc(&here),
            version_select("from", "From", &sorted, from),
            version_select("to", "To", &sorted, to),
        );
        if adds + dels == 0 {
            d.push_str(&html::empty(
                "No differences",
                "The two versions carry the same configuration.",
            ));
        } else {
            d.push_str(&tollgate_ui::diff::render(&lines, 3));
        }
        body.push_str(&html::card_id("diff", &format!("Diff v{from} → v{to}"), &d));
    }
    if let Some(v) = q.view {
        let yaml = state
            .store
            .version(group.clone(), v)
            .await?
            .map(|x| x.0)
            .ok_or_else(|| UiError::NotFound(format!("group {group:?} has no version {v}")))?;
        body.push_str(&html::card_id(
            "yaml",
            &format!("v{v} configuration"),
            &format!("<pre class=\"yaml\">{}</pre>", esc(&yaml)),
        ));
    }
    Ok(render(&ctx, "config", &format!("Config · {group}"), &body))
}

/// `canary_labels` as typed in the form: `k=v, k2=v2`.
fn parse_labels(s: &str) -> Result<std::collections::BTreeMap<String, String>, UiError> {
    s.split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(UiError::BadRequest(format!(
                "canary label {p:?}: use key=value"
            ))),
        })
        .collect()
}

pub(super) async fn start(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: String,
) -> Result<Response, UiError> {
    let form = html::form_decode(&body);
    let here = format!("/ui/config/{}", html::url(&group));
    let ctx = Ctx::for_post(&state, &headers, &form, &here, true).await?;
    require_group(&ctx.op, &group)?;
    let version: u64 = html::form_get(&form, "version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| UiError::BadRequest("choose a version".into()))?;
    let canary_percent: u8 = html::form_get(&form, "canary_percent")
        .unwrap_or("100")
        .parse()
        .map_err(|_| UiError::BadRequest("canary % must be 1-100".into()))?;
    let canary_labels = parse_labels(html::form_get(&form, "canary_labels").unwrap_or_default())?;
    crate::server::rollout::start(
        &state,
        &ctx.op,
        &group,
        StartRollout {
            version,
            canary_percent,
            canary_labels,
        },
    )
    .await?;
    tracing::info!(operator.name = %ctx.op.name, group.name = %group, config.version = version, "dashboard: rollout started");
    Ok(redirect(&format!("{here}?done=started")))
}

pub(super) async fn promote(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: String,
) -> Result<Response, UiError> {
    let form = html::form_decode(&body);
    let here = format!("/ui/config/{}", html::url(&group));
    let ctx = Ctx::for_post(&state, &headers, &form, &here, true).await?;
    require_group(&ctx.op, &group)?;
    crate::server::rollout::promote(&state, &ctx.op, &group).await?;
    tracing::info!(operator.name = %ctx.op.name, group.name = %group, "dashboard: rollout promoted");
    Ok(redirect(&format!("{here}?done=promoted")))
}

pub(super) async fn rollback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: String,
) -> Result<Response, UiError> {
    let form = html::form_decode(&body);
    let here = format!("/ui/config/{}", html::url(&group));
    let ctx = Ctx::for_post(&state, &headers, &form, &here, true).await?;
    require_group(&ctx.op, &group)?;
    crate::server::rollout::rollback(&state, &ctx.op, &group).await?;
    tracing::info!(operator.name = %ctx.op.name, group.name = %group, "dashboard: rollout rolled back");
    Ok(redirect(&format!("{here}?done=rolled_back")))
}
