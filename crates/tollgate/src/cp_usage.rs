//! `tollgate cp usage` and `tollgate cp events`: fleet usage and gateway audit events from the
//! control plane (`GET /v1/usage`, `GET /v1/audit/events`), as a table, JSON or CSV.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use http::Method;
use tollgate_control::agent::client::Client;

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this group (a group-scoped viewer token always sees only its own).
    #[arg(long)]
    group: Option<String>,
    /// Only this gateway id.
    #[arg(long)]
    gateway: Option<String>,
    #[arg(long)]
    api: Option<String>,
    #[arg(long)]
    consumer: Option<String>,
    /// Endpoint pattern, e.g. "GET /repos/{id}".
    #[arg(long)]
    endpoint: Option<String>,
    /// Start, unix seconds or relative like 1h / 30m / 7d (ago). Default: 1h.
    #[arg(long, default_value = "1h")]
    from: String,
    /// End, unix seconds or relative (ago). Default: now.
    #[arg(long)]
    to: Option<String>,
    /// Bucket width in seconds; 0 = one total over the range.
    #[arg(long, default_value_t = 60)]
    step: u64,
    /// Split by: group, gateway, api, consumer, endpoint, status_class.
    #[arg(long, value_parser = ["group", "gateway", "api", "consumer", "endpoint", "status_class"])]
    by: Option<String>,
    /// Print CSV (as served by the control plane) instead of a table.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// Print the JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[arg(long)]
    group: Option<String>,
    #[arg(long)]
    gateway: Option<String>,
    /// deny, limit, dlp, report or config_applied.
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    api: Option<String>,
    #[arg(long)]
    consumer: Option<String>,
    /// Start, unix seconds or relative (ago). Default: 24h.
    #[arg(long, default_value = "24h")]
    from: String,
    #[arg(long, default_value_t = 100)]
    limit: u64,
    #[arg(long)]
    json: bool,
}

/// Unix seconds from `1700000000` or a relative `90s` / `30m` / `2h` / `7d` (before now).
fn when(s: &str) -> anyhow::Result<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?}: expected unix seconds or e.g. 30m, 2h, 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("{s:?}: expected unix seconds or e.g. 30m, 2h, 7d"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(now.saturating_sub(secs))
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            q.push(if q.is_empty() { '?' } else { '&' });
            q.push_str(k);
            q.push('=');
            q.push_str(&enc(v));
        }
    }
    q
}

async fn fetch(client: &Client, token: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let reply = client
        .call(
            Method::GET,
            path,
            Some(token),
            None,
            Duration::from_secs(30),
        )
        .await?;
    if !reply.status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        bail!(
            "{} {}",
            reply.status,
            v["message"].as_str().unwrap_or("(no message)")
        );
    }
    Ok(reply.body.to_vec())
}

pub async fn usage(client: &Client, token: &str, a: UsageArgs) -> anyhow::Result<()> {
    let from = when(&a.from)?;
    let to = a.to.as_deref().map(when).transpose()?;
    let path = format!(
        "/v1/usage{}",
        query(&[
            ("group", a.group),
            ("gateway", a.gateway),
            ("api", a.api),
            ("consumer", a.consumer),
            ("endpoint", a.endpoint),
            ("from", Some(from.to_string())),
            ("to", to.map(|t| t.to_string())),
            ("step", Some(a.step.to_string())),
            ("by", a.by),
            ("format", a.csv.then(|| "csv".to_owned())),
        ])
    );
    let body = fetch(client, token, &path).await?;
    if a.csv || a.json {
        print!("{}", String::from_utf8_lossy(&body));
        if a.json {
            println!();
        }
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).context("control plane sent invalid JSON")?;
    println!(
        "{:<11} {:<28} {:>9} {:>7} {:>7} {:>8} {:>8} {:>12} {:>12}",
        "T", "KEY", "REQUESTS", "ERRORS", "LIMITED", "P50_MS", "P99_MS", "BYTES_IN", "BYTES_OUT"
    );
    for p in v["points"].as_array().into_iter().flatten() {
        println!(
            "{:<11} {:<28} {:>9} {:>7} {:>7} {:>8.1} {:>8.1} {:>12} {:>12}",
            p["t"].as_u64().unwrap_or(0),
            p["key"].as_str().unwrap_or_default(),
            p["requests"].as_u64().unwrap_or(0),
            p["errors"].as_u64().unwrap_or(0),
            p["limited"].as_u64().unwrap_or(0),
            p["p50_ms"].as_f64().unwrap_or(0.0),
            p["p99_ms"].as_f64().unwrap_or(0.0),
            p["bytes_in"].as_u64().unwrap_or(0),
            p["bytes_out"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}

pub async fn events(client: &Client, token: &str, a: EventsArgs) -> anyhow::Result<()> {
    let from = when(&a.from)?;
    let path = format!(
        "/v1/audit/events{}",
        query(&[
            ("group", a.group),
            ("gateway", a.gateway),
            ("kind", a.kind),
            ("api", a.api),
            ("consumer", a.consumer),
            ("from", Some(from.to_string())),
            ("limit", Some(a.limit.to_string())),
        ])
    );
    let body = fetch(client, token, &path).await?;
    if a.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).context("control plane sent invalid JSON")?;
    println!(
        "{:<14} {:<20} {:<16} {:<15} {:<16} {:<16} {:>6}  REASON",
        "LAST_AT_MS", "GATEWAY", "GROUP", "KIND", "API", "CONSUMER", "COUNT"
    );
    for e in v.as_array().into_iter().flatten() {
        println!(
            "{:<14} {:<20} {:<16} {:<15} {:<16} {:<16} {:>6}  {}",
            e["last_at_ms"].as_u64().unwrap_or(0),
            e["gateway"].as_str().unwrap_or_default(),
            e["group"].as_str().unwrap_or_default(),
            e["kind"].as_str().unwrap_or_default(),
            e["api"].as_str().unwrap_or_default(),
            e["consumer"].as_str().unwrap_or_default(),
            e["count"].as_u64().unwrap_or(0),
            e["reason"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_queries() {
        assert_eq!(when("1700000000").unwrap(), 1_700_000_000);
        assert!(when("2h").unwrap() > 0);
        assert!(when("2x").is_err());
        assert_eq!(
            query(&[
                ("a", Some("GET /x".into())),
                ("b", None),
                ("c", Some("1".into()))
            ]),
            "?a=GET%20%2Fx&c=1"
        );
    }
}
