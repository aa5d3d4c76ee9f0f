//! Traffic: usage reported by the fleet over a time range — requests, errors and 429s and the
//! latency percentiles over time; top APIs, consumers and endpoints; quota usage against each
//! limit; and the groups (customers) side by side. A group-scoped viewer only ever queries its
//! own group: every chart and table on the page is built from queries carrying that group.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use tollgate_ui::chart::{self, Series};
use tollgate_ui::html::{self, esc, fmt_count, fmt_ms, stat, stats};

use super::usage_data::{self, By, Point};
use super::{Ctx, UiError, group_select, render, require_group, visible_groups};
use crate::server::{AppState, unix_now};

#[derive(serde::Deserialize)]
pub(super) struct TrafficQuery {
    group: Option<String>,
    range: Option<String>,
}

const RANGES: &[(&str, &str, u64)] = &[
    ("1h", "1 hour", 3600),
    ("6h", "6 hours", 6 * 3600),
    ("24h", "24 hours", 24 * 3600),
    ("7d", "7 days", 7 * 86_400),
];

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".into()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

fn top_rows(points: &[Point], n: usize) -> Vec<(String, f64)> {
    let mut rows: Vec<(String, f64)> = points
        .iter()
        .map(|p| {
            let k = if p.key.is_empty() {
                "(none)".to_owned()
            } else {
                p.key.clone()
            };
            (k, p.requests as f64)
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(n);
    rows
}

pub(super) async fn page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<TrafficQuery>,
) -> Result<Response, UiError> {
    let ctx = Ctx::from_headers(&state, &headers, "/ui/traffic").await?;
    let asked = q.group.filter(|g| !g.is_empty());
    if let Some(g) = &asked {
        require_group(&ctx.op, g)?;
    }
    // A scoped viewer's queries always carry its group, whatever the URL says.
    let group = asked.or_else(|| ctx.op.visible_group().map(str::to_owned));
    let (range_key, range_label, secs) = RANGES
        .iter()
        .copied()
        .find(|r| Some(r.0) == q.range.as_deref())
        .unwrap_or(RANGES[0]);
    let now = unix_now();
    let to = (now / 60 + 1) * 60;
    let from = to - secs;
    let step = (secs / 60).div_ceil(60) * 60;
    let groups = visible_groups(&state, &ctx.op).await?;
    let mk = |by: Option<By>, step: u64| usage_data::Query {
        group: group.clone(),
        from,
        to,
        step,
        by,
    };

    let mut body = String::with_capacity(16 * 1024);
    let mut seg = String::from("<span class=\"seg\" id=\"range\">");
    for (k, label, _) in RANGES {
        let _ = write!(
            seg,
            "<a href=\"/ui/traffic?range={k}{g}\"{on} title=\"{label}\">{k}</a>",
            g = group
                .as_deref()
                .map(|g| format!("&amp;group={}", html::url(g)))
                .unwrap_or_default(),
            on = if *k == range_key { " class=\"on\"" } else { "" },
        );
    }
    seg.push_str("</span>");
    let _ = write!(
        body,
        "<form class=\"toolbar\" method=\"get\" action=\"/ui/traffic\">{}<input type=\"hidden\" name=\"range\" value=\"{}\">\
         <button class=\"btn secondary\">Show</button><span class=\"spacer\"></span>{seg}</form>",
        group_select(&groups, group.as_deref(), ctx.op.visible_group().is_none()),
        esc(range_key)
    );

    let Some(series) = usage_data::usage(&state, mk(None, step)).await? else {
        body.push_str(&html::card(
            "Traffic",
            &html::empty(
                "Usage reporting is not available",
                "This control plane does not store fleet usage yet; gateways' own metrics are on their admin listener (/ui, /metrics).",
            ),
        ));
        return Ok(render(&ctx, "traffic", "Traffic", &body));
    };
    let total = series.iter().fold(Point::default(), |mut a, p| {
        a.requests += p.requests;
        a.errors += p.errors;
        a.limited += p.limited;
        a.bytes_in += p.bytes_in;
        a.bytes_out += p.bytes_out;
        a.p99_ms = a.p99_ms.max(p.p99_ms);
        a
    });
    let scope = group.as_deref().unwrap_or("all groups");
    body.push_str(&stats(&[
        stat(
            "Requests",
            &fmt_count(total.requests),
            &format!("{scope} · last {range_label}"),
        ),
        stat(
            "Errors",
            &fmt_count(total.errors),
            &pct(total.errors, total.requests),
        ),
        stat(
            "Limited (429)",
            &fmt_count(total.limited),
            &pct(total.limited, total.requests),
        ),
        stat("Worst p99", &fmt_ms(total.p99_ms), "highest bucket p99"),
        stat(
            "Bytes",
            &html::fmt_bytes(total.bytes_in + total.bytes_out),
            &format!(
                "{} in · {} out",
                html::fmt_bytes(total.bytes_in),
                html::fmt_bytes(total.bytes_out)
            ),
        ),
    ]));
    // Buckets without traffic are not stored: draw them as zeros so the lines span the range.
    let filled: Vec<Point> = {
        let mut out = Vec::with_capacity((secs / step.max(60)) as usize + 1);
        let mut it = series.iter().peekable();
        let mut t = from - from % step.max(60);
        while t < to {
            let mut p = Point {
                t,
                ..Point::default()
            };
            while let Some(s) = it.next_if(|s| s.t < t + step.max(60)) {
                p.requests += s.requests;
                p.errors += s.errors;
                p.limited += s.limited;
            }
            out.push(p);
            t += step.max(60);
        }
        out
    };
    let span = (
        filled.first().map_or(from, |p| p.t) as f64,
        filled.last().map_or(to, |p| p.t) as f64,
    );
    let xf = |x: f64| html::fmt_hm(x.max(0.0) as u64);
    let count = |v: f64| html::fmt_num(v);
    let req_series = vec![
        Series {
            name: "requests".into(),
            points: filled
                .iter()
                .map(|p| (p.t as f64, p.requests as f64))
                .collect(),
        },
        Series {
            name: "errors".into(),
            points: filled
                .iter()
                .map(|p| (p.t as f64, p.errors as f64))
                .collect(),
        },
        Series {
            name: "429s".into(),
            points: filled
                .iter()
                .map(|p| (p.t as f64, p.limited as f64))
                .collect(),
        },
    ];
    let lat_series = vec![
        Series {
            name: "p50".into(),
            points: series
                .iter()
                .filter(|p| p.requests > 0)
                .map(|p| (p.t as f64, p.p50_ms))
                .collect(),
        },
        Series {
            name: "p90".into(),
            points: series
                .iter()
                .filter(|p| p.requests > 0)
                .map(|p| (p.t as f64, p.p90_ms))
                .collect(),
        },
        Series {
            name: "p99".into(),
            points: series
                .iter()
                .filter(|p| p.requests > 0)
                .map(|p| (p.t as f64, p.p99_ms))
                .collect(),
        },
    ];
    let step_label = format!("per {} min", step / 60);
    let _ = write!(
        body,
        "<div class=\"grid2\">{}{}</div>",
        html::card_id(
            "requests-card",
            &format!("Requests, errors and 429s ({step_label})"),
            &chart::line_chart_in("requests-chart", &req_series, Some(span), &xf, &count)
        ),
        html::card_id(
            "latency-card",
            "Latency percentiles",
            &chart::line_chart_in("latency-chart", &lat_series, Some(span), &xf, &|v| fmt_ms(
                v
            ))
        ),
    );

    let apis = usage_data::usage(&state, mk(Some(By::Api), 0))
        .await?
        .unwrap_or_default();
    let consumers = usage_data::usage(&state, mk(Some(By::Consumer), 0))
        .await?
        .unwrap_or_default();
    let endpoints = usage_data::usage(&state, mk(Some(By::Endpoint), 0))
        .await?
        .unwrap_or_default();
    let _ = write!(
        body,
        "<div class=\"grid2\">{}{}</div>{}",
        html::card_id(
            "top-apis",
            "Top APIs",
            &chart::bar_chart("apis-chart", &top_rows(&apis, 10), &count)
        ),
        html::card_id(
            "top-consumers",
            "Top consumers",
            &chart::bar_chart("consumers-chart", &top_rows(&consumers, 10), &count)
        ),
        html::card_id(
            "top-endpoints",
            "Top endpoints",
            &chart::bar_chart("endpoints-chart", &top_rows(&endpoints, 10), &count)
        ),
    );

    // Quota usage: the latest sample of each limit counter. A `global` limit is one counter
    // shared by the group's gateways (each reports it): shown once; a `local` one per gateway.
    let limits = usage_data::limits(&state, mk(None, step))
        .await?
        .unwrap_or_default();
    type LimitKey = (String, String, String, String, String);
    let mut latest: BTreeMap<LimitKey, (u64, u64, u64, String)> = BTreeMap::new();
    for l in &limits {
        let gw = if l.scope == "global" {
            String::new()
        } else {
            l.gateway.clone()
        };
        let e = latest
            .entry((
                l.group.clone(),
                l.api.clone(),
                l.limit.clone(),
                l.key.clone(),
                gw,
            ))
            .or_insert((0, 0, 0, l.scope.clone()));
        if l.t >= e.0 {
            *e = (l.t, l.used, l.max, l.scope.clone());
        }
    }
    let quota = if latest.is_empty() {
        html::empty(
            "No limits reported",
            "Gateways report each limit's use against its quota once traffic meets a limit.",
        )
    } else {
        let mut t = String::from(
            "<table id=\"quota-table\"><thead><tr><th>Group</th><th>API</th><th>Limit</th><th>Key</th><th>Gateway</th><th class=\"num\">Used</th><th class=\"num\">Quota</th><th>Usage</th></tr></thead><tbody>",
        );
        for ((g, api, limit, key, gw), (_, used, max, scope)) in &latest {
            let _ = write!(
                t,
                "<tr data-limit=\"{}/{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"mono small\">{}</td><td class=\"num used\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(api),
                esc(limit),
                esc(g),
                esc(api),
                esc(limit),
                esc(if key == "-" { "whole API" } else { key }),
                esc(if gw.is_empty() { scope } else { gw }),
                used,
                fmt_count(*max),
                chart::meter(*used as f64, *max as f64)
            );
        }
        t.push_str("</tbody></table>");
        t
    };
    let _ = write!(body, "{}", html::card_id("quota", "Quota usage", &quota));

    // Groups side by side (a scoped viewer's comparison holds its own group only).
    let by_group = usage_data::usage(&state, mk(Some(By::Group), 0))
        .await?
        .unwrap_or_default();
    let mut cmp = String::new();
    if by_group.is_empty() {
        cmp.push_str(&html::empty(
            "No usage yet",
            "Groups appear here once their gateways report traffic.",
        ));
    } else {
        cmp.push_str(&chart::bar_chart(
            "groups-chart",
            &top_rows(&by_group, 20),
            &count,
        ));
        cmp.push_str("<table id=\"compare-table\"><thead><tr><th>Group</th><th class=\"num\">Requests</th><th class=\"num\">Error rate</th><th class=\"num\">429 rate</th><th class=\"num\">p50</th><th class=\"num\">p99</th><th class=\"num\">Bytes</th></tr></thead><tbody>");
        let mut rows: Vec<&Point> = by_group.iter().collect();
        rows.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.key.cmp(&b.key)));
        for p in rows {
            let _ = write!(
                cmp,
                "<tr data-group=\"{k}\"><td><a href=\"/ui/traffic?group={ku}&amp;range={r}\">{k}</a></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                fmt_count(p.requests),
                pct(p.errors, p.requests),
                pct(p.limited, p.requests),
                fmt_ms(p.p50_ms),
                fmt_ms(p.p99_ms),
                html::fmt_bytes(p.bytes_in + p.bytes_out),
                k = esc(&p.key),
                ku = html::url(&p.key),
                r = esc(range_key),
            );
        }
        cmp.push_str("</tbody></table>");
    }
    body.push_str(&html::card_id("compare", "Groups side by side", &cmp));
    Ok(render(&ctx, "traffic", "Traffic", &body))
}
