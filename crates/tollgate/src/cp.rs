//! `tollgate cp …`: the operator CLI for the control plane API (`tollgate_control::protocol`).
//!
//! Trust: `--ca-fingerprint` pins the control plane's certificate by SHA-256 (what
//! `tollgate control-plane` prints for its self-signed certificate); without it the certificate
//! must chain to the system roots and match the host name. There is deliberately no `--insecure`:
//! the operator token would be sent to whoever answers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use http::{Method, StatusCode};
use tollgate_control::agent::client::{Client, parse_fingerprint};

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Control plane base URL.
    #[arg(
        long,
        env = "TOLLGATE_CP_URL",
        default_value = "https://127.0.0.1:9443",
        global = true
    )]
    url: String,
    /// Operator token (admin to change anything, viewer to read).
    #[arg(long, env = "TOLLGATE_CP_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// SHA-256 fingerprint of the control plane's TLS certificate (hex, colons optional).
    #[arg(long, env = "TOLLGATE_CP_FINGERPRINT", global = true)]
    ca_fingerprint: Option<String>,
    #[command(subcommand)]
    command: CpCommand,
}

#[derive(Debug, Subcommand)]
enum CpCommand {
    /// Gateway groups.
    Groups {
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Enrollment tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Config versions.
    Configs {
        #[command(subcommand)]
        command: ConfigsCommand,
    },
    /// Enrolled gateways.
    Gateways {
        #[command(subcommand)]
        command: GatewaysCommand,
    },
    /// Operator tokens.
    Operators {
        #[command(subcommand)]
        command: OperatorsCommand,
    },
    /// Rollouts: canary first, then promote or roll back.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Fleet usage by time bucket: requests, errors, 429s, latency percentiles, bytes.
    Usage(crate::cp_usage::UsageArgs),
    /// Audit events from the gateways: denials, limit breaches, DLP hits, config applied.
    Events(crate::cp_usage::EventsArgs),
    /// Print the audit log, newest first (who, when, what).
    Audit {
        /// How many records (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorsCommand {
    /// Create an operator token NAME with --role admin or viewer (read-only); prints the token
    /// once. `--group G` (viewer only) limits it to one group's data.
    Create {
        name: String,
        #[arg(long, value_parser = ["admin", "viewer"])]
        role: String,
        /// Viewer scoped to this group: sees nothing of any other group.
        #[arg(long)]
        group: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Roll VERSION (published with `configs publish --no-assign`) out to GROUP's canaries:
    /// `--canary 20%` of the gateways (stable hash of the id) and/or those with
    /// `--canary-labels ring=canary`.
    Start {
        group: String,
        /// The published version to roll out.
        #[arg(value_name = "VERSION")]
        config_version: u64,
        /// Share of the candidate gateways, e.g. `20%` (default 100% of the candidates).
        #[arg(long, value_parser = parse_percent)]
        canary: Option<u8>,
        /// Candidates: gateways carrying all these labels (repeatable KEY=VALUE).
        #[arg(long = "canary-labels", value_parser = parse_label)]
        canary_labels: Vec<(String, String)>,
    },
    /// Give the rollout's version to every gateway of GROUP.
    Promote { group: String },
    /// Return GROUP's canaries to the previous configuration (signed as a new version).
    Rollback { group: String },
    /// GROUP's version, rollout and, per gateway, canary membership and drift.
    Status { group: String },
}

fn parse_percent(s: &str) -> Result<u8, String> {
    let n: u8 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?}: expected a percentage like 20%"))?;
    if n == 0 || n > 100 {
        return Err(format!("{s:?}: must be 1-100%"));
    }
    Ok(n)
}

#[derive(Debug, Subcommand)]
enum GroupsCommand {
    /// Create a group, optionally with labels (`--label tier=gold`).
    Create {
        name: String,
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List groups with their assigned version.
    List,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a one-time enrollment token for GROUP (valid 24 h); prints the token only.
    Create { group: String },
}

#[derive(Debug, Subcommand)]
enum ConfigsCommand {
    /// Validate FILE on the control plane, then sign, store and assign it to GROUP.
    Publish {
        group: String,
        file: PathBuf,
        /// Store and sign only; roll it out later with `tollgate cp rollout start`.
        #[arg(long)]
        no_assign: bool,
    },
    /// List GROUP's versions.
    List { group: String },
    /// Assign a copy of VERSION's configuration to all of GROUP as a new version (going back
    /// after a promote: gateways refuse older version numbers).
    Restore {
        group: String,
        #[arg(value_name = "VERSION")]
        from: u64,
    },
}

#[derive(Debug, Subcommand)]
enum GatewaysCommand {
    /// List gateways: group, applied version, health, last seen.
    List,
    /// Revoke a gateway's credential (its calls get 401 from now on).
    Revoke { id: String },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

pub fn main(args: CpArgs) -> ExitCode {
    let rt = match crate::runtime::build(crate::runtime::Flavor::Client) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: CpArgs) -> anyhow::Result<()> {
    let fp = match &args.ca_fingerprint {
        Some(s) => Some(parse_fingerprint(s).context("--ca-fingerprint: expected 64 hex digits")?),
        None => None,
    };
    let client = Client::new(&args.url, fp)?;
    let token = args
        .token
        .as_deref()
        .context("an operator token is required: --token or TOLLGATE_CP_TOKEN")?;
    let call = |method: Method, path: String, body: Option<Vec<u8>>| {
        let client = client.clone();
        async move {
            let reply = client
                .call(method, &path, Some(token), body, Duration::from_secs(30))
                .await?;
            if !reply.status.is_success() {
                let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
                let mut msg = format!(
                    "{} {}",
                    reply.status,
                    v["message"].as_str().unwrap_or("(no message)")
                );
                for e in v["errors"].as_array().into_iter().flatten() {
                    msg.push_str(&format!("\n  {}", e.as_str().unwrap_or_default()));
                }
                bail!(msg);
            }
            let v: serde_json::Value = if reply.status == StatusCode::NO_CONTENT {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&reply.body).context("control plane sent invalid JSON")?
            };
            Ok(v)
        }
    };
    match args.command {
        CpCommand::Groups {
            command: GroupsCommand::Create { name, labels },
        } => {
            let labels: serde_json::Map<String, serde_json::Value> =
                labels.into_iter().map(|(k, v)| (k, v.into())).collect();
            let body = serde_json::json!({"name": name, "labels": labels});
            call(
                Method::POST,
                "/v1/groups".into(),
                Some(body.to_string().into_bytes()),
            )
            .await?;
            println!("created group {name}");
        }
        CpCommand::Groups {
            command: GroupsCommand::List,
        } => {
            let v = call(Method::GET, "/v1/groups".into(), None).await?;
            println!("{:<24} {:>8}  LABELS", "GROUP", "VERSION");
            for g in v.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>8}  {}",
                    g["name"].as_str().unwrap_or_default(),
                    g["assigned_version"].as_u64().unwrap_or(0),
                    g["labels"]
                );
            }
        }
        CpCommand::Tokens {
            command: TokensCommand::Create { group },
        } => {
            let v = call(
                Method::POST,
                format!("/v1/groups/{group}/enrollment-tokens"),
                None,
            )
            .await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        CpCommand::Configs {
            command:
                ConfigsCommand::Publish {
                    group,
                    file,
                    no_assign,
                },
        } => {
            let yaml =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let query = if no_assign { "?assign=false" } else { "" };
            let v = call(
                Method::POST,
                format!("/v1/groups/{group}/configs{query}"),
                Some(yaml),
            )
            .await?;
            println!(
                "published {} to {group} as version {}{}",
                file.display(),
                v["version"],
                if no_assign { " (not assigned)" } else { "" }
            );
        }
        CpCommand::Configs {
            command: ConfigsCommand::List { group },
        } => {
            let v = call(Method::GET, format!("/v1/groups/{group}/configs"), None).await?;
            println!("{:>8}  {:<9} {:<16} SHA256", "VERSION", "ASSIGNED", "BY");
            for c in v.as_array().into_iter().flatten() {
                println!(
                    "{:>8}  {:<9} {:<16} {}",
                    c["version"].as_u64().unwrap_or(0),
                    if c["assigned"] == true { "yes" } else { "" },
                    c["created_by"].as_str().unwrap_or_default(),
                    c["sha256"].as_str().unwrap_or_default()
                );
            }
        }
        CpCommand::Gateways {
            command: GatewaysCommand::List,
        } => {
            let v = call(Method::GET, "/v1/gateways".into(), None).await?;
            println!(
                "{:<20} {:<20} {:<16} {:>7} {:>8} {:<9} LAST_SEEN",
                "ID", "NAME", "GROUP", "APPLIED", "ASSIGNED", "HEALTH"
            );
            for g in v.as_array().into_iter().flatten() {
                let health = if g["revoked"] == true {
                    "revoked"
                } else if g["healthy"] == true {
                    "ok"
                } else {
                    "unhealthy"
                };
                println!(
                    "{:<20} {:<20} {:<16} {:>7} {:>8} {:<9} {}",
                    g["id"].as_str().unwrap_or_default(),
                    g["name"].as_str().unwrap_or_default(),
                    g["group"].as_str().unwrap_or_default(),
                    g["applied_version"].as_u64().unwrap_or(0),
                    format!(
                        "{}{}",
                        if g["drift"] == true { "*" } else { "" },
                        g["assigned_version"].as_u64().unwrap_or(0)
                    ),
                    health,
                    g["last_seen"].as_u64().unwrap_or(0)
                );
            }
        }
        CpCommand::Operators {
            command: OperatorsCommand::Create { name, role, group },
        } => {
            let mut body = serde_json::json!({"name": name, "role": role});
            if let Some(g) = group {
                body["group"] = g.into();
            }
            let v = call(
                Method::POST,
                "/v1/operator-tokens".into(),
                Some(body.to_string().into_bytes()),
            )
            .await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        CpCommand::Configs {
            command: ConfigsCommand::Restore { group, from },
        } => {
            let v = call(
                Method::POST,
                format!("/v1/groups/{group}/configs/{from}/restore"),
                None,
            )
            .await?;
            println!(
                "restored version {from} of {group} as version {}",
                v["version"]
            );
        }
        CpCommand::Rollout { command } => {
            let (group, v) = match command {
                RolloutCommand::Start {
                    group,
                    config_version: version,
                    canary,
                    canary_labels,
                } => {
                    let labels: serde_json::Map<String, serde_json::Value> = canary_labels
                        .into_iter()
                        .map(|(k, v)| (k, v.into()))
                        .collect();
                    let body = serde_json::json!({
                        "version": version,
                        "canary_percent": canary.unwrap_or(100),
                        "canary_labels": labels,
                    });
                    let v = call(
                        Method::POST,
                        format!("/v1/groups/{group}/rollout"),
                        Some(body.to_string().into_bytes()),
                    )
                    .await?;
                    (group, v)
                }
                RolloutCommand::Promote { group } => {
                    let v = call(
                        Method::POST,
                        format!("/v1/groups/{group}/rollout/promote"),
                        None,
                    )
                    .await?;
                    (group, v)
                }
                RolloutCommand::Rollback { group } => {
                    let v = call(
                        Method::POST,
                        format!("/v1/groups/{group}/rollout/rollback"),
                        None,
                    )
                    .await?;
                    (group, v)
                }
                RolloutCommand::Status { group } => {
                    let v = call(Method::GET, format!("/v1/groups/{group}/rollout"), None).await?;
                    (group, v)
                }
            };
            print_rollout(&group, &v);
        }
        CpCommand::Usage(a) => crate::cp_usage::usage(&client, token, a).await?,
        CpCommand::Events(a) => crate::cp_usage::events(&client, token, a).await?,
        CpCommand::Audit { limit } => {
            let v = call(Method::GET, format!("/v1/audit?limit={limit}"), None).await?;
            for e in v.as_array().into_iter().flatten() {
                println!(
                    "{} {:<24} {:<24} {:<20} {}",
                    e["at_ms"].as_u64().unwrap_or(0),
                    e["actor"].as_str().unwrap_or_default(),
                    e["action"].as_str().unwrap_or_default(),
                    e["target"].as_str().unwrap_or_default(),
                    e["detail"]
                );
            }
        }
        CpCommand::Gateways {
            command: GatewaysCommand::Revoke { id },
        } => {
            call(Method::POST, format!("/v1/gateways/{id}/revoke"), None).await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// Prints a `RolloutStatus`: the group's version, the rollout, then one line per gateway.
fn print_rollout(group: &str, v: &serde_json::Value) {
    println!(
        "group {group}: version {}",
        v["group_version"].as_u64().unwrap_or(0)
    );
    let r = &v["rollout"];
    if r.is_object() {
        let share = r["canary_percent"].as_u64().unwrap_or(0);
        let labels = match r["canary_labels"].as_object() {
            Some(m) if !m.is_empty() => format!(" of gateways labelled {}", r["canary_labels"]),
            _ => String::new(),
        };
        println!(
            "rollout #{}: version {} (from {}), canary {share}%{labels}, {}; started by {} at {}, last change by {} at {}{}",
            r["id"],
            r["version"],
            r["base_version"],
            r["state"].as_str().unwrap_or_default(),
            r["started_by"].as_str().unwrap_or_default(),
            r["started_at_ms"],
            r["updated_by"].as_str().unwrap_or_default(),
            r["updated_at_ms"],
            match r["rollback_version"].as_u64() {
                Some(b) => format!("; old configuration re-issued as version {b}"),
                None => String::new(),
            }
        );
    } else {
        println!("no rollout");
    }
    println!(
        "{:<20} {:<20} {:<6} {:>8} {:>7} DRIFT",
        "ID", "NAME", "CANARY", "ASSIGNED", "APPLIED"
    );
    for g in v["gateways"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<20} {:<6} {:>8} {:>7} {}",
            g["id"].as_str().unwrap_or_default(),
            g["name"].as_str().unwrap_or_default(),
            if g["canary"] == true { "yes" } else { "" },
            g["assigned_version"].as_u64().unwrap_or(0),
            g["applied_version"].as_u64().unwrap_or(0),
            if g["drift"] == true { "drift" } else { "" }
        );
    }
}
