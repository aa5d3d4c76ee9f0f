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
    /// once.
    Create {
        name: String,
        #[arg(long, value_parser = ["admin", "viewer"])]
        role: String,
    },
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
    Publish { group: String, file: PathBuf },
    /// List GROUP's versions.
    List { group: String },
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
            command: ConfigsCommand::Publish { group, file },
        } => {
            let yaml =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let v = call(
                Method::POST,
                format!("/v1/groups/{group}/configs"),
                Some(yaml),
            )
            .await?;
            println!(
                "published {} to {group} as version {}",
                file.display(),
                v["version"]
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
                    g["group_version"].as_u64().unwrap_or(0),
                    health,
                    g["last_seen"].as_u64().unwrap_or(0)
                );
            }
        }
        CpCommand::Operators {
            command: OperatorsCommand::Create { name, role },
        } => {
            let body = serde_json::json!({"name": name, "role": role});
            let v = call(
                Method::POST,
                "/v1/operator-tokens".into(),
                Some(body.to_string().into_bytes()),
            )
            .await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
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
