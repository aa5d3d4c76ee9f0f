//! `tollgate discover`: prints the endpoints a running gateway has seen
//! (`GET /admin/discovery`) as a table, the raw JSON with `--json`, or with
//! `--suggest` a starting policy for them.
//!
//! The suggestion is one API per host seen through the forward proxy or a
//! CONNECT tunnel (route traffic is already governed by an API and is skipped);
//! hosts whose traffic a configured API already matched are one API under that
//! name. Each has
//! `hosts`, `allow` rules grouping the observed path patterns by method set
//! (each `{id}` numbered so names are unique in a pattern), and a `provider`
//! limit when the provider announced one: IETF `RateLimit-Policy` `q`/`w` as
//! is, or the largest `x-ratelimit-limit` per the smallest of 1s/1m/1h/1d that
//! covers the longest reset seen. `default_action: report` so nothing is
//! refused until the operator switches to `deny`. The output is a complete
//! configuration that `tollgate validate` accepts (tested in
//! tests/python/test_discovery.py).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Base URL of the gateway's admin listener.
    #[arg(long, env = "TOLLGATE_ADMIN", default_value = "http://127.0.0.1:8081")]
    admin: String,
    /// Admin bearer token (when `admin.token` is configured).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the JSON document instead of a table.
    #[arg(long, conflicts_with = "suggest")]
    json: bool,
    /// Print a starting policy (YAML) for the observed APIs instead of a table.
    #[arg(long)]
    suggest: bool,
}

pub fn main(args: DiscoverArgs) -> ExitCode {
    let rt = match crate::runtime::build(crate::runtime::Flavor::Client) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let fetched = rt.block_on(crate::limits_cli::admin_get(
        &args.admin,
        args.token.as_deref(),
        "/admin/discovery",
    ));
    match fetched {
        Ok(doc) if args.json => println!("{doc:#}"),
        Ok(doc) if args.suggest => print!("{}", suggest(&doc)),
        Ok(doc) => print!("{}", render(&doc)),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn endpoints(doc: &Value) -> impl Iterator<Item = (&str, &Value)> {
    doc["hosts"].as_array().into_iter().flatten().flat_map(|h| {
        let host = h["host"].as_str().unwrap_or("");
        h["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(move |e| (host, e))
    })
}

/// The table: one row per endpoint, then overflow notes.
pub fn render(doc: &Value) -> String {
    let header = [
        "HOST",
        "METHOD",
        "PATTERN",
        "KIND",
        "APIS",
        "COUNT",
        "DENIED",
        "2XX",
        "4XX",
        "5XX",
        "P50MS",
        "P99MS",
        "CONSUMERS",
        "PROVIDER-LIMIT",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for (host, e) in endpoints(doc) {
        let names = |v: &Value| {
            let list: Vec<String> = v.as_array().into_iter().flatten().map(cell).collect();
            if list.is_empty() {
                "-".to_owned()
            } else {
                list.join(",")
            }
        };
        let mut consumers = names(&e["consumers"]);
        if e["consumers_truncated"].as_bool() == Some(true) {
            consumers.push_str(",…");
        }
        let status = |c: &str| e["status"][c].as_u64().unwrap_or(0).to_string();
        let limit = match provider_limit(e) {
            Some((n, per, _)) => format!("{n}/{per}"),
            None => "-".to_owned(),
        };
        let pattern = cell(&e["pattern"]);
        rows.push(vec![
            host.to_owned(),
            cell(&e["method"]),
            if pattern.is_empty() {
                "-".to_owned()
            } else {
                pattern
            },
            cell(&e["kind"]),
            names(&e["apis"]),
            cell(&e["count"]),
            cell(&e["denied"]),
            status("2xx"),
            status("4xx"),
            status("5xx"),
            cell(&e["latency_ms"]["p50"]),
            cell(&e["latency_ms"]["p99"]),
            consumers,
            limit,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    for h in doc["hosts"].as_array().into_iter().flatten() {
        if h["overflow"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                out,
                "{}: {} requests to further endpoints not recorded (discovery.max_endpoints_per_host)",
                cell(&h["host"]),
                cell(&h["overflow"])
            );
        }
    }
    if doc["host_overflow"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            out,
            "{} requests to further hosts not recorded (discovery.max_hosts)",
            cell(&doc["host_overflow"])
        );
    }
    out
}

/// The provider's announced limit for an endpoint: `(requests, per, why)`.
fn provider_limit(e: &Value) -> Option<(u64, String, String)> {
    let rl = &e["rate_limit"];
    let policy = &rl["max_policy"];
    if let (Some(q), Some(w)) = (policy["quota"].as_u64(), policy["window_seconds"].as_u64())
        && q > 0
        && w > 0
    {
        return Some((q, window(w as f64), format!("RateLimit-Policy q={q};w={w}")));
    }
    let limit = rl["max_limit"].as_u64().filter(|n| *n > 0)?;
    let reset = rl["max_reset_seconds"].as_f64()?;
    Some((
        limit,
        window(reset),
        format!("rate-limit header limit {limit}, reset within {reset:.0}s"),
    ))
}

/// The smallest of 1s, 1m, 1h, 1d that covers `secs` (a reset is at most one window away);
/// longer ones in whole days.
fn window(secs: f64) -> String {
    for (len, name) in [(1.0, "1s"), (60.0, "1m"), (3600.0, "1h"), (86_400.0, "1d")] {
        if secs <= len {
            return name.to_owned();
        }
    }
    format!("{}d", (secs / 86_400.0).ceil())
}

/// A pattern with each `{id}` numbered (`{id}`, `{id2}`, …): names must be unique in a pattern.
fn numbered(pattern: &str) -> String {
    let mut n = 0;
    let segs: Vec<String> = pattern
        .split('/')
        .map(|s| {
            if s == "{id}" {
                n += 1;
                if n == 1 {
                    s.to_owned()
                } else {
                    format!("{{id{n}}}")
                }
            } else {
                s.to_owned()
            }
        })
        .collect();
    segs.join("/")
}

/// An API name from a host: letters, digits, `.`, `_` and `-` only.
fn api_name(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A double-quoted YAML scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

#[derive(Default)]
struct HostPlan {
    /// Pattern → methods seen.
    paths: BTreeMap<String, BTreeSet<String>>,
    tunnel: bool,
    /// Best provider limit: the largest request count seen.
    limit: Option<(u64, String, String)>,
    count: u64,
    /// Configured APIs its requests matched.
    apis: BTreeSet<String>,
    /// Hosts of the group (one, unless a configured API governs several).
    hosts: BTreeSet<String>,
    /// Requests to endpoints beyond `discovery.max_endpoints_per_host`.
    overflow: u64,
}

impl HostPlan {
    fn merge(&mut self, other: HostPlan) {
        for (p, m) in other.paths {
            self.paths.entry(p).or_default().extend(m);
        }
        self.tunnel |= other.tunnel;
        if let Some(l) = other.limit
            && self.limit.as_ref().is_none_or(|p| l.0 > p.0)
        {
            self.limit = Some(l);
        }
        self.count += other.count;
        self.apis.extend(other.apis);
        self.hosts.extend(other.hosts);
        self.overflow += other.overflow;
    }
}

/// The suggested policy YAML.
pub fn suggest(doc: &Value) -> String {
    let mut hosts: BTreeMap<&str, HostPlan> = BTreeMap::new();
    for (host, e) in endpoints(doc) {
        if e["kind"] == "route" || host.is_empty() {
            continue;
        }
        let plan = hosts.entry(host).or_default();
        plan.hosts.insert(host.to_owned());
        plan.count += e["count"].as_u64().unwrap_or(0);
        plan.apis
            .extend(e["apis"].as_array().into_iter().flatten().map(cell));
        let method = cell(&e["method"]);
        if method == "CONNECT" {
            plan.tunnel = true;
        } else {
            plan.paths
                .entry(cell(&e["pattern"]))
                .or_default()
                .insert(method);
        }
        if let Some(l) = provider_limit(e)
            && plan.limit.as_ref().is_none_or(|p| l.0 > p.0)
        {
            plan.limit = Some(l);
        }
    }
    let mut out = String::from(
        "# Suggested by `tollgate discover --suggest` from the traffic this gateway has seen.\n\
         # Review it: every observed endpoint is allowed, nothing else is known yet.\n\
         # `report` forwards traffic no API matches and logs that `deny` would refuse it;\n\
         # switch to `default_action: deny` once these APIs cover all your traffic.\n\
         default_action: report\n",
    );
    if doc["host_overflow"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            out,
            "# {} requests to hosts beyond discovery.max_hosts were not recorded: those hosts are missing.",
            cell(&doc["host_overflow"])
        );
    }
    for h in doc["hosts"].as_array().into_iter().flatten() {
        if let Some(plan) = hosts.get_mut(h["host"].as_str().unwrap_or("")) {
            plan.overflow = h["overflow"].as_u64().unwrap_or(0);
        }
    }
    // One API per host, except that hosts a configured API already governs together stay one
    // API under its name (its allow rules apply to all its hosts anyway).
    let mut groups: BTreeMap<String, HostPlan> = BTreeMap::new();
    for (host, plan) in hosts {
        let name = match plan.apis.iter().collect::<Vec<_>>()[..] {
            [only] => only.clone(),
            _ => api_name(host),
        };
        match groups.get_mut(&name) {
            Some(g) if g.apis.len() == 1 && g.apis == plan.apis => g.merge(plan),
            _ => {
                let mut unique = name.clone();
                let mut k = 2;
                while groups.contains_key(&unique) {
                    unique = format!("{name}-{k}");
                    k += 1;
                }
                groups.insert(unique, plan);
            }
        }
    }
    if groups.is_empty() {
        out.push_str("# No forward-proxy or CONNECT traffic seen yet.\napis: []\n");
        return out;
    }
    out.push_str("apis:\n");
    for (name, plan) in &groups {
        let _ = writeln!(out, "  # {} requests seen", plan.count);
        if plan.overflow > 0 {
            let n = plan.overflow;
            let _ = writeln!(
                out,
                "  # {n} requests to endpoints beyond discovery.max_endpoints_per_host were not recorded: their paths are missing."
            );
        }
        let _ = writeln!(out, "  - name: {}", q(name));
        let hosts: Vec<String> = plan.hosts.iter().map(|h| q(h)).collect();
        let _ = writeln!(out, "    hosts: [{}]", hosts.join(", "));
        if plan.paths.is_empty() {
            out.push_str(
                "    # Only CONNECT tunnels seen: paths are not visible, so no allow rules.\n",
            );
        } else {
            if plan.tunnel {
                out.push_str(
                    "    # CONNECT tunnels were seen too: allow rules do not apply to them.\n",
                );
            }
            // Group patterns by the set of methods seen on them.
            let mut rules: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
            for (pattern, methods) in &plan.paths {
                rules
                    .entry(methods.iter().cloned().collect())
                    .or_default()
                    .push(numbered(pattern));
            }
            out.push_str("    allow:\n");
            for (methods, paths) in rules {
                let methods: Vec<String> = methods.iter().map(|m| q(m)).collect();
                let paths: Vec<String> = paths.iter().map(|p| q(p)).collect();
                let _ = writeln!(out, "      - methods: [{}]", methods.join(", "));
                let _ = writeln!(out, "        paths: [{}]", paths.join(", "));
            }
        }
        if let Some((requests, per, why)) = &plan.limit {
            out.push_str("    limits:\n");
            let _ = writeln!(out, "      # from the provider's {why}");
            let _ = writeln!(
                out,
                "      - {{ name: provider, requests: {requests}, per: {per} }}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({ "hosts": [
            { "host": "api.example.com", "overflow": 3, "endpoints": [
                { "method": "GET", "pattern": "/v1/users/{id}/orders/{id}", "kind": "forward",
                  "apis": [], "count": 4, "denied": 0, "status": { "2xx": 4 },
                  "latency_ms": { "p50": 5.0, "p99": 10.0 }, "consumers": ["a"],
                  "consumers_truncated": false,
                  "rate_limit": { "max_limit": 5000, "max_reset_seconds": 3599.0 } },
                { "method": "POST", "pattern": "/v1/users", "kind": "forward", "count": 1 },
                { "method": "GET", "pattern": "/v1/users", "kind": "forward", "count": 1 },
                { "method": "CONNECT", "pattern": "", "kind": "connect", "count": 1 }
            ]},
            { "host": "gateway.local:8080", "endpoints": [
                { "method": "GET", "pattern": "/gh/x", "kind": "route", "count": 1 } ]},
            { "host": "api.github.com", "endpoints": [
                { "method": "GET", "pattern": "/repos", "kind": "forward", "count": 1,
                  "apis": ["github"] } ]},
            { "host": "uploads.github.com", "endpoints": [
                { "method": "POST", "pattern": "/repos", "kind": "forward", "count": 1,
                  "apis": ["github"] } ]},
            { "host": "tunnel.example", "endpoints": [
                { "method": "CONNECT", "pattern": "", "kind": "connect", "count": 2,
                  "rate_limit": null } ]}
        ], "host_overflow": 0 })
    }

    #[test]
    fn suggestion_groups_methods_numbers_ids_and_reads_limits() {
        let s = suggest(&doc());
        assert!(s.contains("default_action: report\n"), "{s}");
        assert!(
            s.contains(
                "      - methods: [\"GET\"]\n        paths: [\"/v1/users/{id}/orders/{id2}\"]\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("      - methods: [\"GET\", \"POST\"]\n        paths: [\"/v1/users\"]\n"),
            "{s}"
        );
        assert!(
            s.contains("      - { name: provider, requests: 5000, per: 1h }\n"),
            "{s}"
        );
        assert!(!s.contains("gateway.local"), "routes are skipped: {s}");
        assert!(
            s.contains("  # 3 requests to endpoints beyond discovery.max_endpoints_per_host"),
            "{s}"
        );
        assert!(
            s.contains(
                "  - name: \"tunnel.example\"\n    hosts: [\"tunnel.example\"]\n    # Only CONNECT"
            ),
            "{s}"
        );
    }

    #[test]
    fn windows_and_table() {
        assert_eq!(window(0.5), "1s");
        assert_eq!(window(59.0), "1m");
        assert_eq!(window(3600.0), "1h");
        assert_eq!(window(90_000.0), "2d");
        let t = render(&doc());
        assert!(
            t.contains("api.example.com: 3 requests to further endpoints"),
            "{t}"
        );
        let row = t
            .lines()
            .find(|l| l.contains("/v1/users/{id}/orders/{id}"))
            .unwrap();
        assert!(row.contains("5000/1h"), "{t}");
    }
}
