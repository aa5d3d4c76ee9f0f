//! `tollgate limits`: prints a running gateway's rate-limit counters (`GET /admin/limits`) as a
//! table, or the raw JSON with `--json`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// Base URL of the gateway's admin listener.
    #[arg(long, env = "TOLLGATE_ADMIN", default_value = "http://127.0.0.1:8081")]
    admin: String,
    /// Admin bearer token (when `admin.token` is configured).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn main(args: LimitsArgs) -> ExitCode {
    let rt = match crate::runtime::build(crate::runtime::Flavor::Client) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(fetch(&args)) {
        Ok(doc) => {
            if args.json {
                println!("{doc:#}");
            } else {
                print!("{}", render(&doc));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `host:port` and base path of an `http://` admin URL.
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("--admin must be an http:// URL (the admin listener serves plain HTTP)")?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    if authority.is_empty() {
        bail!("--admin has no host");
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path))
}

async fn fetch(args: &LimitsArgs) -> anyhow::Result<Value> {
    admin_get(&args.admin, args.token.as_deref(), "/admin/limits").await
}

/// `GET <admin><path>` on the admin listener, expecting 200 and a JSON body (shared with
/// `tollgate discover`).
pub(crate) async fn admin_get(
    admin: &str,
    token: Option<&str>,
    path: &str,
) -> anyhow::Result<Value> {
    let (authority, base) = split_url(admin)?;
    let mut req = format!(
        "GET {base}{path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some(t) = token {
        let _ = write!(req, "Authorization: Bearer {t}\r\n");
    }
    req.push_str("\r\n");
    let io = async {
        let mut s = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("cannot connect to the admin listener at {authority}"))?;
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .context("the admin listener did not answer within 30 s")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the admin listener sent no HTTP response")?;
    let status = head.split(' ').nth(1).unwrap_or("");
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    if status != "200" {
        bail!("GET {path} answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).context("the admin listener sent invalid JSON")
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The table: one row per key (a limit without live keys gets one row with `-`).
pub fn render(doc: &Value) -> String {
    let store = &doc["store"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shared store: {}{}, instances: {}",
        if store["redis"].as_bool() == Some(true) {
            "redis"
        } else {
            "none"
        },
        if store["degraded"].as_bool() == Some(true) {
            " (DEGRADED)"
        } else {
            ""
        },
        cell(&store["instances"]),
    );
    let header = [
        "API",
        "LIMIT",
        "SCOPE",
        "ALGORITHM",
        "QUOTA",
        "WINDOW",
        "KEY",
        "USED",
        "REMAINING",
        "RESET",
        "QUEUE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for api in doc["apis"].as_array().into_iter().flatten() {
        for l in api["limits"].as_array().into_iter().flatten() {
            let mut scope = cell(&l["scope"]);
            if l["store"] == "unavailable" {
                scope.push_str(" (store unavailable)");
            }
            let base = vec![
                cell(&api["name"]),
                cell(&l["name"]),
                scope,
                cell(&l["algorithm"]),
                cell(&l["quota"]),
                cell(&l["window"]),
            ];
            let keys = l["keys"].as_array().cloned().unwrap_or_default();
            if keys.is_empty() {
                let mut r = base.clone();
                r.extend(["(none)", "0", &cell(&l["quota"]), "-"].map(str::to_owned));
                r.push(cell(&l["queue_depth"]));
                rows.push(r);
            }
            for k in keys {
                let mut r = base.clone();
                let reset = k["reset_after_ms"].as_u64().unwrap_or(0).div_ceil(1000);
                r.extend([
                    cell(&k["key"]),
                    cell(&k["used"]),
                    cell(&k["remaining"]),
                    format!("{reset}s"),
                    cell(&l["queue_depth"]),
                ]);
                rows.push(r);
            }
            if l["keys_truncated"].as_bool() == Some(true) {
                let mut r = base.clone();
                r.extend(["…", "", "", "", ""].map(str::to_owned));
                rows.push(r);
            }
        }
    }
    let mut notes = String::new();
    for api in doc["apis"].as_array().into_iter().flatten() {
        let b = &api["breaker"];
        if b.is_object() && b["state"] != "closed" {
            let _ = writeln!(
                notes,
                "API {}: circuit breaker {}",
                cell(&api["name"]),
                cell(&b["state"])
            );
        }
        if let Some(ms) = api["provider_backoff_ms"].as_u64() {
            let shared = if api["provider_backoff_shared"] == true {
                " (shared)"
            } else {
                ""
            };
            let _ = writeln!(
                notes,
                "API {}: provider back-off for {} s more{shared}",
                cell(&api["name"]),
                ms.div_ceil(1000)
            );
        }
        for (key, ms) in api["key_backoff_ms"].as_object().into_iter().flatten() {
            if let Some(ms) = ms.as_u64() {
                let _ = writeln!(
                    notes,
                    "API {}: credential key {key} backed off for {} s more",
                    cell(&api["name"]),
                    ms.div_ceil(1000)
                );
            }
        }
        if let Some(c) = api["concurrency"].as_object() {
            let _ = writeln!(
                notes,
                "API {}: {} in flight, {} waiting",
                cell(&api["name"]),
                cell(&c["in_flight"]),
                cell(&c["queued"])
            );
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out.push_str(&notes);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn urls_and_tables() {
        assert_eq!(
            split_url("http://127.0.0.1:8081").unwrap(),
            ("127.0.0.1:8081".to_owned(), String::new())
        );
        assert_eq!(split_url("http://gw/base/").unwrap().1, "/base");
        assert_eq!(split_url("http://gw").unwrap().0, "gw:80");
        assert!(split_url("https://gw").is_err());
        assert_eq!(dechunk("5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"), "helloabc");
        let doc = json!({
            "store": { "redis": true, "degraded": true, "instances": 2 },
            "apis": [{ "name": "gh", "limits": [
                { "name": "hourly", "scope": "global", "store": "unavailable", "algorithm": "fixed",
                  "quota": 10, "window": "1h", "keys": [], "keys_truncated": false, "queue_depth": 0 },
                { "name": "per-key", "scope": "local", "store": "local", "algorithm": "gcra",
                  "quota": 5, "window": "1m", "keys": [
                    { "key": "00ff", "used": 2, "remaining": 3, "reset_after_ms": 1500 }
                  ], "keys_truncated": false, "queue_depth": 4 }
            ], "breaker": { "state": "open", "open_for_ms": 10 }, "provider_backoff_ms": 1500,
               "provider_backoff_shared": true, "key_backoff_ms": { "a": 2500, "b": null },
               "concurrency": null }]
        });
        let t = render(&doc);
        assert!(
            t.starts_with("shared store: redis (DEGRADED), instances: 2\n"),
            "{t}"
        );
        assert!(t.contains("global (store unavailable)"), "{t}");
        assert!(t.contains("API gh: circuit breaker open\n"), "{t}");
        assert!(
            t.contains("API gh: provider back-off for 2 s more (shared)\n"),
            "{t}"
        );
        assert!(
            t.contains("API gh: credential key a backed off for 3 s more\n"),
            "{t}"
        );
        assert!(!t.contains("credential key b"), "{t}");
        let row = t.lines().find(|l| l.contains("per-key")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "gh", "per-key", "local", "gcra", "5", "1m", "00ff", "2", "3", "2s", "4"
            ]
        );
    }
}
