//! The gateway's local one-gateway view on the admin listener (`/ui`): its status and config
//! version, recent traffic (from its own metrics), the live rate-limit counters (the data of
//! `/admin/limits`) and the **discovery panel** (`/admin/discovery`: every endpoint seen with
//! counts, status codes, latency and consumers). Same look as the control-plane dashboard
//! (`tollgate-ui`), server-rendered, assets embedded, charts as inline SVG.
//!
//! Auth follows the admin API: without `admin.token` the pages are open (the listener is
//! loopback-only then); with a token, `/ui/login` takes it once and sets an HMAC-signed
//! `HttpOnly; SameSite=Strict` session cookie keyed from a per-process random key *and* the
//! token, so changing the token (or restarting) ends every session. The cookie never holds
//! the token. Pages are read-only; the only POSTs (sign-in, sign-out) check the origin, and
//! sign-out a CSRF token.
//!
//! Recent traffic: a sampler task reads the request counters every [`SAMPLE_EVERY`] (and each
//! overview page view adds one, at most one a second) and keeps the last [`SAMPLES`], so the
//! page can draw requests, errors and denials per minute. It starts with the admin router and
//! ends when the gateway is dropped.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tollgate_ui::chart::{self, Series};
use tollgate_ui::html::{
    self, NavItem, Shell, Tone, User, esc, fmt_count, fmt_ms, pill, stat, stats,
};
use tollgate_ui::session::{self, SessionKey};

use crate::reload::Reloader;
use crate::state::Gateway;

const COOKIE: &str = "tg_admin_session";
const SESSION_SECS: u64 = 8 * 3600;
const ASSETS: &str = "/ui/assets";
/// How often the traffic sampler reads the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept (one hour).
const SAMPLES: usize = 360;

/// Totals of `tollgate_requests_total` at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sample {
    t: u64,
    requests: f64,
    errors: f64,
    denied: f64,
}

#[derive(Clone)]
struct UiState {
    gateway: Arc<Gateway>,
    reloader: Arc<Reloader>,
    key: Option<SessionKey>,
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

/// The `/ui` routes (merged into the admin router; they do their own session check).
pub fn router(gateway: Arc<Gateway>, reloader: Arc<Reloader>) -> Router {
    let key = match SessionKey::random() {
        Ok(k) => Some(k),
        Err(e) => {
            // Without a key no session can be issued: with an admin token the pages then
            // refuse every sign-in; without one they work as usual.
            tracing::error!(error = %e, "admin UI: no random source for session keys");
            None
        }
    };
    let samples = Arc::new(Mutex::new(VecDeque::with_capacity(SAMPLES)));
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(sampler(Arc::downgrade(&gateway), Arc::clone(&samples)));
    }
    let state = UiState {
        gateway,
        reloader,
        key,
        samples,
    };
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(overview))
        .route("/ui/limits", get(limits))
        .route("/ui/discovery", get(discovery))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{name}", get(asset))
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn sampler(gateway: Weak<Gateway>, samples: Arc<Mutex<VecDeque<Sample>>>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(gw) = gateway.upgrade() else { return };
        let text = gw.metrics.encode();
        drop(gw);
        record(&samples, totals(&text, unix_now()));
    }
}

/// Appends a sample (at most one per second: rates need a time difference).
fn record(samples: &Mutex<VecDeque<Sample>>, s: Sample) {
    if let Ok(mut q) = samples.lock() {
        if q.back().is_some_and(|last| last.t >= s.t) {
            return;
        }
        if q.len() == SAMPLES {
            q.pop_front();
        }
        q.push_back(s);
    }
}

/// One `tollgate_requests_total` line: labels and value.
fn request_lines(text: &str) -> impl Iterator<Item = (BTreeMap<&str, &str>, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tollgate_requests_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            let value: f64 = value.split(' ').next()?.parse().ok()?;
            let map = labels
                .split("\",")
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.trim_matches(','), v.trim_end_matches('"')))
                })
                .collect();
            Some((map, value))
        })
}

fn totals(text: &str, t: u64) -> Sample {
    let mut s = Sample {
        t,
        ..Sample::default()
    };
    for (labels, v) in request_lines(text) {
        s.requests += v;
        if labels.get("status_class").is_some_and(|c| *c == "5xx") {
            s.errors += v;
        }
        if labels.get("decision").is_some_and(|d| *d == "deny") {
            s.denied += v;
        }
    }
    s
}

/// Requests by one label (e.g. `api`), largest first.
fn by_label(text: &str, label: &str) -> Vec<(String, f64)> {
    let mut m: BTreeMap<String, f64> = BTreeMap::new();
    for (labels, v) in request_lines(text) {
        let k = labels.get(label).copied().unwrap_or("");
        let k = if k.is_empty() { "(none)" } else { k };
        *m.entry(k.to_owned()).or_default() += v;
    }
    let mut rows: Vec<(String, f64)> = m.into_iter().filter(|r| r.1 > 0.0).collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(12);
    rows
}

/// A metric's single value (first sample line of `name`).
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let v = rest.rsplit(' ').next()?;
        (rest.starts_with(' ') || rest.starts_with('{'))
            .then(|| v.parse().ok())
            .flatten()
    })
}

fn html_response(status: StatusCode, body: String) -> Response {
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

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
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

/// The session key for the current admin token (`None`: no token configured, pages open).
fn token_key(st: &UiState) -> Option<Option<SessionKey>> {
    let active = st.gateway.active.load();
    let token = active.admin_token()?;
    Some(st.key.as_ref().map(|k| k.with(token.expose().as_bytes())))
}

/// Who is looking: `Ok(None)` = no admin token configured (open), `Ok(Some(csrf))` = a valid
/// session, `Err` = sign in first.
fn session_of(
    st: &UiState,
    headers: &HeaderMap,
    next: &str,
) -> Result<Option<(String, String)>, Box<Response>> {
    let Some(key) = token_key(st) else {
        return Ok(None);
    };
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| session::cookie(c, COOKIE))
        .unwrap_or_default();
    match key {
        Some(k) if k.open(cookie, unix_now()) == Some("admin") => {
            Ok(Some((k.csrf(cookie), cookie.to_owned())))
        }
        _ => Err(Box::new(redirect(&format!(
            "/ui/login?next={}",
            html::url(next)
        )))),
    }
}

const NAV: &[NavItem<'static>] = &[
    NavItem {
        key: "overview",
        href: "/ui",
        label: "Overview",
    },
    NavItem {
        key: "limits",
        href: "/ui/limits",
        label: "Limits",
    },
    NavItem {
        key: "discovery",
        href: "/ui/discovery",
        label: "Discovery",
    },
];

fn render(session: &Option<(String, String)>, active: &str, title: &str, body: &str) -> Response {
    let shell = Shell {
        product: "Gateway",
        assets: ASSETS,
        home: "/ui",
        nav: NAV,
        active,
        user: session.as_ref().map(|(csrf, _)| User {
            name: "admin",
            role: "admin token",
            csrf,
            logout: "/ui/logout",
        }),
    };
    html_response(StatusCode::OK, html::page(&shell, title, body))
}

async fn overview(State(st): State<UiState>, headers: HeaderMap) -> Response {
    let session = match session_of(&st, &headers, "/ui") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let now = unix_now();
    let status = st.reloader.status();
    let active = st.gateway.active.load();
    let cfg = active.policy.config();
    let text = st.gateway.metrics.encode();
    let current = totals(&text, now);
    // A page view is a sample too, so the chart is current up to this second.
    record(&st.samples, current);
    let switches = st.gateway.switches.snapshot();
    // A managed gateway only serves once a bundle applied, so `applied_version > 0` marks it.
    let managed = gauge(&text, "tollgate_config_applied_version")
        .filter(|v| *v > 0.0)
        .and(gauge(&text, "tollgate_control_plane_connected"));
    let mut body = String::with_capacity(16 * 1024);
    if switches.deny_all {
        body.push_str(&html::notice(
            Tone::Bad,
            "Emergency switch: ALL traffic is denied (DELETE /admin/switches/deny-all to lift it).",
        ));
    }
    body.push_str(&stats(&[
        stat(
            "Config version",
            &format!("v{}", status.version),
            &format!("from {}", status.source),
        ),
        stat(
            "Requests",
            &fmt_count(current.requests as u64),
            "since start",
        ),
        stat(
            "Server errors",
            &fmt_count(current.errors as u64),
            "5xx answers",
        ),
        stat(
            "Denied",
            &fmt_count(current.denied as u64),
            "refused by policy",
        ),
        stat(
            "Open connections",
            &gauge(&text, "tollgate_proxy_connections_active")
                .map_or("–".into(), |v| fmt_count(v as u64)),
            "client connections",
        ),
    ]));

    let health = if st.gateway.shutdown.is_triggered() {
        pill(Tone::Warn, "shutting down")
    } else if status.last_error.is_some() {
        pill(Tone::Warn, "serving; last reload failed")
    } else {
        pill(Tone::Ok, "serving")
    };
    let cp = match managed {
        Some(v) if v >= 1.0 => pill(Tone::Ok, "connected"),
        Some(_) => pill(Tone::Bad, "unreachable — serving the last good config"),
        None => pill(Tone::Muted, "not managed"),
    };
    let mut kv = String::new();
    let _ = write!(
        kv,
        "<dl class=\"kv\" id=\"status\"><dt>Status</dt><dd id=\"health\">{health}</dd>\
         <dt>Config version</dt><dd id=\"config-version\">v{ver}</dd><dt>Source</dt><dd>{src}</dd>\
         <dt>Applied</dt><dd>{applied}</dd><dt>Reloads</dt><dd>{ok} ok · {failed} failed</dd>\
         <dt>Control plane</dt><dd>{cp}</dd><dt>Default action</dt><dd>{da}</dd><dt>Report only</dt><dd>{ro}</dd>\
         <dt>APIs</dt><dd>{apis}</dd><dt>Consumers</dt><dd>{consumers}</dd>",
        ver = status.version,
        src = esc(&status.source),
        applied = esc(&html::fmt_time(status.applied_at)),
        ok = status.reloads_ok,
        failed = status.reloads_failed,
        da = esc(&format!("{:?}", cfg.default_action).to_lowercase()),
        ro = if cfg.report_only { "yes" } else { "no" },
        apis = cfg
            .apis
            .iter()
            .map(|a| format!("<span class=\"tag\">{}</span>", esc(&a.name)))
            .collect::<String>(),
        consumers = cfg
            .consumers
            .iter()
            .map(|c| format!("<span class=\"tag\">{}</span>", esc(&c.name)))
            .collect::<String>(),
    );
    if let Some(err) = &status.last_error {
        let _ = write!(
            kv,
            "<dt>Last reload error</dt><dd class=\"small mono\">{}</dd>",
            esc(err)
        );
    }
    if !switches.denied_apis.is_empty() || !switches.denied_consumers.is_empty() {
        let _ = write!(
            kv,
            "<dt>Switched off</dt><dd>{}</dd>",
            switches
                .denied_apis
                .iter()
                .map(|a| pill(Tone::Bad, &format!("api {a}")))
                .chain(
                    switches
                        .denied_consumers
                        .iter()
                        .map(|c| pill(Tone::Bad, &format!("consumer {c}")))
                )
                .collect::<String>()
        );
    }
    kv.push_str("</dl>");
    drop(active);

    // Requests per minute over the last hour, from the sampler.
    let samples: Vec<Sample> = st
        .samples
        .lock()
        .map(|q| q.iter().copied().collect())
        .unwrap_or_default();
    let per_min = |f: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples
            .windows(2)
            .map(|w| {
                let dt = (w[1].t.saturating_sub(w[0].t)).max(1) as f64;
                (w[1].t as f64, ((f(&w[1]) - f(&w[0])).max(0.0)) * 60.0 / dt)
            })
            .collect()
    };
    let series = vec![
        Series {
            name: "requests/min".into(),
            points: per_min(|s| s.requests),
        },
        Series {
            name: "5xx/min".into(),
            points: per_min(|s| s.errors),
        },
        Series {
            name: "denied/min".into(),
            points: per_min(|s| s.denied),
        },
    ];
    let rate_chart = if samples.len() < 2 {
        html::empty(
            "Collecting",
            &format!(
                "The rate chart fills in as samples arrive (every {} s, the last hour kept).",
                SAMPLE_EVERY.as_secs()
            ),
        )
    } else {
        chart::line_chart(
            "rate-chart",
            &series,
            &|x| html::fmt_hm(x.max(0.0) as u64),
            &|v| html::fmt_num(v),
        )
    };
    let _ = write!(
        body,
        "<div class=\"grid2\">{}{}</div>",
        html::card_id("status-card", "Gateway", &kv),
        html::card_id("rate", "Requests per minute (last hour)", &rate_chart),
    );
    let count = |v: f64| html::fmt_num(v);
    let _ = write!(
        body,
        "<div class=\"grid2\">{}{}</div><div class=\"grid2\">{}{}</div>",
        html::card_id(
            "by-api",
            "Requests by API",
            &chart::bar_chart("api-chart", &by_label(&text, "api"), &count)
        ),
        html::card_id(
            "by-consumer",
            "Requests by consumer",
            &chart::bar_chart("consumer-chart", &by_label(&text, "consumer"), &count)
        ),
        html::card_id(
            "by-status",
            "Requests by status class",
            &chart::bar_chart("status-chart", &by_label(&text, "status_class"), &count)
        ),
        html::card_id(
            "by-decision",
            "Requests by decision",
            &chart::bar_chart("decision-chart", &by_label(&text, "decision"), &count)
        ),
    );
    render(&session, "overview", "Gateway", &body)
}

async fn limits(State(st): State<UiState>, headers: HeaderMap) -> Response {
    let session = match session_of(&st, &headers, "/ui/limits") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let snap = crate::admin_limits::snapshot(&st.gateway).await;
    let mut body = String::with_capacity(8192);
    let store = &snap["store"];
    let store_pill = if store["degraded"].as_bool() == Some(true) {
        pill(Tone::Bad, "shared store degraded")
    } else if store["redis"].as_bool() == Some(true) {
        pill(
            Tone::Ok,
            &format!("Redis · {} instances", store["instances"]),
        )
    } else {
        pill(Tone::Muted, "local counters")
    };
    let _ = write!(body, "<p id=\"limit-store\">Counters: {store_pill}</p>");
    let apis = snap["apis"].as_array().cloned().unwrap_or_default();
    if apis.is_empty() {
        body.push_str(&html::card(
            "Limits",
            &html::empty(
                "No APIs configured",
                "Limits are set per API under apis[].limits.",
            ),
        ));
    }
    for api in &apis {
        let name = api["name"].as_str().unwrap_or_default();
        let mut t = String::new();
        let breaker = api["breaker"]["state"].as_str().or(api["breaker"].as_str());
        let mut badges = String::new();
        if let Some(b) = breaker {
            badges.push_str(&pill(
                if b == "closed" { Tone::Ok } else { Tone::Bad },
                &format!("breaker {b}"),
            ));
        }
        if api["provider_backoff_ms"].as_u64().is_some_and(|ms| ms > 0) {
            badges.push_str(&pill(Tone::Warn, "provider back-off"));
        }
        if let Some(c) = api["concurrency"].as_object() {
            badges.push_str(&pill(
                Tone::Info,
                &format!(
                    "{} in flight · {} queued",
                    c.get("in_flight").unwrap_or(&Value::Null),
                    c.get("queued").unwrap_or(&Value::Null)
                ),
            ));
        }
        let limits = api["limits"].as_array().cloned().unwrap_or_default();
        if limits.is_empty() {
            t.push_str("<p class=\"muted\">No rate limits or quotas on this API.</p>");
        } else {
            t.push_str("<table class=\"limits\"><thead><tr><th>Limit</th><th>Scope</th><th class=\"num\">Quota</th><th>Window</th><th>Key</th><th class=\"num\">Used</th><th>Usage</th><th class=\"num\">Resets in</th><th class=\"num\">Queued</th></tr></thead><tbody>");
            for l in &limits {
                let quota = l["quota"].as_u64().unwrap_or(0);
                let keys = l["keys"].as_array().cloned().unwrap_or_default();
                let head = format!(
                    "<td><strong>{}</strong></td><td>{} · {}</td><td class=\"num\">{}</td><td>{}</td>",
                    esc(l["name"].as_str().unwrap_or_default()),
                    esc(l["scope"].as_str().unwrap_or_default()),
                    esc(l["store"].as_str().unwrap_or_default()),
                    fmt_count(quota),
                    esc(l["window"].as_str().unwrap_or_default()),
                );
                let queued = l["queue_depth"].as_u64().unwrap_or(0);
                if keys.is_empty() {
                    let _ = write!(
                        t,
                        "<tr>{head}<td class=\"muted\">no traffic yet</td><td class=\"num\">0</td><td>{}</td><td></td><td class=\"num\">{queued}</td></tr>",
                        chart::meter(0.0, quota as f64)
                    );
                }
                for k in &keys {
                    let used = k["used"].as_u64().unwrap_or(0);
                    let _ = write!(
                        t,
                        "<tr>{head}<td class=\"mono\">{}</td><td class=\"num used\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{queued}</td></tr>",
                        esc(match k["key"].as_str().unwrap_or_default() {
                            "-" => "whole API",
                            other => other,
                        }),
                        used,
                        chart::meter(used as f64, quota as f64),
                        fmt_ms(k["reset_after_ms"].as_f64().unwrap_or(0.0)),
                    );
                }
            }
            t.push_str("</tbody></table>");
        }
        let _ = write!(
            body,
            "<section class=\"card\" data-api=\"{n}\"><h2>{n} {badges}</h2>{t}</section>",
            n = esc(name)
        );
    }
    render(&session, "limits", "Limits", &body)
}

#[derive(serde::Deserialize)]
struct DiscoveryQuery {
    host: Option<String>,
}

async fn discovery(
    State(st): State<UiState>,
    headers: HeaderMap,
    Query(q): Query<DiscoveryQuery>,
) -> Response {
    let session = match session_of(&st, &headers, "/ui/discovery") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let snap = {
        let active = st.gateway.active.load();
        st.gateway
            .discovery
            .snapshot(&active.policy.config().discovery)
    };
    let mut body = String::with_capacity(16 * 1024);
    let hosts = snap["hosts"].as_array().cloned().unwrap_or_default();
    let endpoints: u64 = snap["endpoints"].as_u64().unwrap_or(0);
    let enabled = snap["enabled"].as_bool().unwrap_or(false);
    let total: u64 = hosts
        .iter()
        .flat_map(|h| h["endpoints"].as_array().into_iter().flatten())
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .sum();
    body.push_str(&stats(&[
        stat(
            "Hosts",
            &hosts.len().to_string(),
            &format!("at most {}", snap["max_hosts"]),
        ),
        stat(
            "Endpoints",
            &endpoints.to_string(),
            &format!("{} per host at most", snap["max_endpoints_per_host"]),
        ),
        stat("Requests seen", &fmt_count(total), ""),
        stat(
            "Recording",
            if enabled { "on" } else { "off" },
            "discovery.enabled",
        ),
    ]));
    let _ = write!(
        body,
        "<form class=\"toolbar\" method=\"get\" action=\"/ui/discovery\"><span class=\"muted\">Every endpoint this gateway has seen, managed or not; \
         <code>tollgate discover --suggest</code> turns it into a starting policy.</span><span class=\"spacer\"></span>\
         <input class=\"filter\" type=\"search\" name=\"host\" value=\"{}\" placeholder=\"Filter endpoints…\" data-filter=\"table.endpoints tbody tr\" aria-label=\"Filter endpoints\"></form>",
        esc(q.host.as_deref().unwrap_or_default())
    );
    let bars: Vec<(String, f64)> = {
        let mut rows: Vec<(String, f64)> = hosts
            .iter()
            .map(|h| {
                let n: u64 = h["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| e["count"].as_u64().unwrap_or(0))
                    .sum();
                (h["host"].as_str().unwrap_or_default().to_owned(), n as f64)
            })
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(10);
        rows
    };
    if hosts.is_empty() {
        body.push_str(&html::card_id(
            "discovery",
            "Endpoints",
            &html::empty(
                if enabled {
                    "No traffic seen yet"
                } else {
                    "Discovery is off"
                },
                if enabled {
                    "Endpoints appear here as requests pass through the gateway."
                } else {
                    "Set discovery.enabled: true to record the endpoints traffic reaches."
                },
            ),
        ));
        return render(&session, "discovery", "Discovery", &body);
    }
    body.push_str(&html::card_id(
        "top-hosts",
        "Busiest hosts",
        &chart::bar_chart("hosts-chart", &bars, &|v| html::fmt_num(v)),
    ));
    for h in &hosts {
        let host = h["host"].as_str().unwrap_or_default();
        if q.host
            .as_deref()
            .is_some_and(|f| !f.is_empty() && !host.contains(f))
        {
            continue;
        }
        let mut t = String::from(
            "<table class=\"endpoints\"><thead><tr><th>Method</th><th>Pattern</th><th>API</th><th class=\"num\">Count</th><th class=\"num\">Denied</th><th>Status codes</th><th class=\"num\">p50</th><th class=\"num\">p99</th><th>Consumers</th><th>Provider limit</th><th>Last seen</th></tr></thead><tbody>",
        );
        for e in h["endpoints"].as_array().into_iter().flatten() {
            let status: String = e["status"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                        .map(|(c, n)| {
                            let tone = match c.as_str() {
                                "2xx" => Tone::Ok,
                                "4xx" => Tone::Warn,
                                "5xx" => Tone::Bad,
                                _ => Tone::Muted,
                            };
                            pill(tone, &format!("{c} {n}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let tags = |v: &Value| -> String {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|s| format!("<span class=\"tag\">{}</span>", esc(s)))
                    .collect()
            };
            let rl = &e["rate_limit"];
            let provider = match (rl["max_limit"].as_u64(), rl["limit"].as_u64()) {
                (Some(m), _) | (None, Some(m)) => {
                    format!("{} (remaining {})", fmt_count(m), rl["remaining"])
                }
                _ => String::new(),
            };
            let _ = write!(
                t,
                "<tr class=\"endpoint\"><td><strong>{}</strong></td><td class=\"mono pattern\">{}</td><td>{}</td><td class=\"num count\">{}</td><td class=\"num\">{}</td><td>{status}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}{}</td><td class=\"small\">{}</td><td class=\"small\">{}</td></tr>",
                esc(e["method"].as_str().unwrap_or_default()),
                esc(e["pattern"].as_str().unwrap_or_default()),
                tags(&e["apis"]),
                e["count"].as_u64().unwrap_or(0),
                e["denied"].as_u64().unwrap_or(0),
                fmt_ms(e["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN)),
                fmt_ms(e["latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN)),
                tags(&e["consumers"]),
                if e["consumers_truncated"].as_bool() == Some(true) {
                    " …"
                } else {
                    ""
                },
                esc(&provider),
                esc(e["last_seen"].as_str().unwrap_or_default()),
            );
        }
        t.push_str("</tbody></table>");
        let overflow = if h["overflow"].as_u64().unwrap_or(0) > 0 {
            pill(
                Tone::Warn,
                &format!("{} more endpoints not tracked", h["overflow"]),
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            "<section class=\"card host\" data-host=\"{h}\"><h2>{h} {overflow}</h2>{t}</section>",
            h = esc(host)
        );
    }
    render(&session, "discovery", "Discovery", &body)
}

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n == "/ui" || n.starts_with("/ui/")) && !n.contains("//") && !n.contains('\\') =>
        {
            n
        }
        _ => "/ui",
    }
}

fn login_html(next: &str, error: Option<&str>) -> String {
    let notice = error
        .map(|e| html::notice(Tone::Bad, e))
        .unwrap_or_default();
    let body = format!(
        "<div class=\"login\"><section class=\"card\"><h2>Sign in to this gateway</h2>{notice}\
         <form method=\"post\" action=\"/ui/login\" id=\"login-form\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Admin token<input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required autofocus></label>\
         <button class=\"btn\" id=\"sign-in\">Sign in</button></form>\
         <p class=\"muted small\">The token is <code>admin.token</code> of this gateway's configuration.</p></section></div>",
        esc(next)
    );
    html::bare_page("Sign in", ASSETS, &body)
}

async fn login_page(Query(q): Query<NextQuery>) -> Response {
    html_response(
        StatusCode::OK,
        login_html(safe_next(q.next.as_deref()), None),
    )
}

/// `Origin`, when present, must name this listener.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|h| h.eq_ignore_ascii_case(host))
}

async fn login(State(st): State<UiState>, headers: HeaderMap, body: String) -> Response {
    if !same_origin(&headers) {
        return html_response(
            StatusCode::FORBIDDEN,
            login_html("/ui", Some("Cross-origin sign-in refused.")),
        );
    }
    let form = html::form_decode(&body);
    let next = safe_next(html::form_get(&form, "next")).to_owned();
    let presented = html::form_get(&form, "token").unwrap_or_default();
    let (ok, key) = {
        let active = st.gateway.active.load();
        match active.admin_token() {
            // No token configured: nothing to sign in to.
            None => return redirect(&next),
            Some(t) => {
                use subtle::ConstantTimeEq as _;
                let ok: bool = presented.as_bytes().ct_eq(t.expose().as_bytes()).into();
                (ok, st.key.as_ref().map(|k| k.with(t.expose().as_bytes())))
            }
        }
    };
    let value = match (ok, key) {
        (true, Some(k)) => k.seal("admin", unix_now() + SESSION_SECS),
        _ => None,
    };
    let Some(value) = value else {
        tracing::warn!("admin UI: sign-in with a wrong admin token");
        return html_response(
            StatusCode::UNAUTHORIZED,
            login_html(&next, Some("That is not this gateway's admin token.")),
        );
    };
    tracing::info!("admin UI: signed in");
    let mut resp = redirect(&next);
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        COOKIE,
        &value,
        "/ui",
        SESSION_SECS,
        false,
    )) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(st): State<UiState>, headers: HeaderMap, body: String) -> Response {
    let form = html::form_decode(&body);
    if let Ok(Some((csrf, _))) = session_of(&st, &headers, "/ui") {
        let presented = html::form_get(&form, "csrf").unwrap_or_default();
        use subtle::ConstantTimeEq as _;
        if !bool::from(csrf.as_bytes().ct_eq(presented.as_bytes())) || !same_origin(&headers) {
            return html_response(
                StatusCode::FORBIDDEN,
                login_html(
                    "/ui",
                    Some("Sign-out refused: reload the page and try again."),
                ),
            );
        }
    }
    let mut resp = redirect("/ui/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(COOKIE, "/ui", false)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE tollgate_requests counter\n\
tollgate_requests_total{kind=\"http\",api=\"github\",consumer=\"ci\",status_class=\"2xx\",decision=\"allow\"} 5\n\
tollgate_requests_total{kind=\"http\",api=\"github\",consumer=\"\",status_class=\"5xx\",decision=\"allow\"} 2\n\
tollgate_requests_total{kind=\"http\",api=\"\",consumer=\"\",status_class=\"4xx\",decision=\"deny\"} 3\n\
tollgate_proxy_connections_active 4\n";

    #[test]
    fn reads_request_counters() {
        let s = totals(TEXT, 7);
        assert_eq!((s.requests, s.errors, s.denied), (10.0, 2.0, 3.0));
        assert_eq!(
            by_label(TEXT, "api"),
            vec![("github".to_string(), 7.0), ("(none)".to_string(), 3.0)]
        );
        assert_eq!(gauge(TEXT, "tollgate_proxy_connections_active"), Some(4.0));
        assert_eq!(gauge(TEXT, "tollgate_nope"), None);
    }

    #[test]
    fn next_stays_local() {
        assert_eq!(safe_next(Some("/ui/limits")), "/ui/limits");
        assert_eq!(safe_next(Some("https://evil.example/")), "/ui");
        assert_eq!(safe_next(Some("/ui//evil.example")), "/ui");
        assert_eq!(safe_next(None), "/ui");
    }
}
