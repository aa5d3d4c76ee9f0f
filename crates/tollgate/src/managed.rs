//! Managed-gateway start-up for `tollgate run --control-plane URL`: enroll (first start),
//! then obtain the first configuration — the verified backup in `--state-dir` (fail static:
//! serve at once, catch up when the control plane answers) or, with no usable backup, the first
//! valid bundle from the control plane. Until then nothing listens: a gateway with no policy
//! has nothing safe to enforce and no listen addresses of its own, so it never serves an empty
//! or default policy by accident; it logs that it is not configured instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tollgate_control::agent::{self, Agent, Ready};
use tollgate_telemetry::Metrics;

/// Flags of a managed gateway (part of `tollgate run`).
#[derive(Debug, Args)]
pub struct ManagedArgs {
    /// Managed gateway: the control plane's URL (e.g. https://cp.example:9443). The
    /// configuration then comes from signed bundles, never from --config.
    #[arg(
        long,
        env = "TOLLGATE_CONTROL_PLANE",
        conflicts_with = "config",
        requires = "state_dir"
    )]
    pub control_plane: Option<String>,
    /// One-time enrollment token (`tollgate cp tokens create GROUP`); needed on first start only.
    #[arg(long, env = "TOLLGATE_ENROLL_TOKEN", requires = "control_plane")]
    pub enroll_token: Option<String>,
    /// Where the credential and the last good bundle (the fail-static backup) are kept.
    #[arg(long, requires = "control_plane")]
    pub state_dir: Option<PathBuf>,
    /// Pin the control plane's bundle-signing key (standard base64 of the ed25519 public key).
    #[arg(long, requires = "control_plane")]
    pub cp_public_key: Option<String>,
    /// Pin the control plane's TLS certificate by SHA-256 fingerprint (hex, colons optional),
    /// as printed by `tollgate control-plane` at start.
    #[arg(long, requires = "control_plane")]
    pub cp_fingerprint: Option<String>,
    /// Name this gateway reports at enrollment (default: the host name).
    #[arg(long, requires = "control_plane")]
    pub gateway_name: Option<String>,
    /// Label reported at enrollment, KEY=VALUE (repeatable).
    #[arg(long = "label", requires = "control_plane", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// How often buffered usage is uploaded, in seconds (usage reaches the on-disk buffer
    /// every 5 s, or this often when shorter: the most a crash can lose).
    #[arg(long, requires = "control_plane", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub usage_interval: u64,
    /// Bound of the on-disk usage buffer (`<state-dir>/usage/`) in bytes; past it the oldest
    /// unsent batches are deleted and counted (tollgate_usage_buffer_evicted_total).
    #[arg(long, requires = "control_plane", default_value_t = agent::usage::DEFAULT_MAX_BYTES)]
    pub usage_buffer_max_bytes: u64,
}

impl ManagedArgs {
    /// The usage pipeline settings.
    pub fn usage_options(&self) -> agent::usage::UsageOptions {
        agent::usage::UsageOptions {
            interval: std::time::Duration::from_secs(self.usage_interval),
            max_bytes: self.usage_buffer_max_bytes,
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "gateway".to_owned())
}

/// Enrolls if needed and returns the agent with the configuration to start from. Returns
/// `Ok(None)` when a stop signal arrived while waiting for the first bundle.
pub async fn start(
    args: &ManagedArgs,
    url: &str,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Option<(Arc<Agent>, Ready)>> {
    let Some(state_dir) = args.state_dir.clone() else {
        anyhow::bail!("--control-plane needs --state-dir");
    };
    if args.cp_public_key.is_none() && args.cp_fingerprint.is_none() {
        anyhow::bail!(
            "--control-plane needs a pin: --cp-public-key (the bundle-signing key) and/or \
             --cp-fingerprint (the control plane's TLS certificate)"
        );
    }
    let pinned_key = args
        .cp_public_key
        .as_deref()
        .map(tollgate_control::bundle::parse_public_key)
        .transpose()
        .context("invalid --cp-public-key")?;
    let fingerprint = match args.cp_fingerprint.as_deref() {
        Some(f) => Some(agent::client::parse_fingerprint(f).with_context(|| {
            format!("invalid --cp-fingerprint {f:?}: expected 64 hex digits (colons optional)")
        })?),
        None => None,
    };
    let opts = agent::Options {
        control_plane: url.to_owned(),
        enroll_token: args.enroll_token.clone(),
        state_dir,
        pinned_key,
        fingerprint,
        name: args.gateway_name.clone().unwrap_or_else(host_name),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        wait_secs: agent::DEFAULT_WAIT_SECS,
        status_interval: agent::STATUS_INTERVAL,
    };
    let stop = std::pin::pin!(stop);
    let started = async {
        let agent = Agent::start(opts, metrics).await?;
        let ready = match agent.backup() {
            Some(ready) => {
                tracing::info!(
                    bundle.version = ready.signed.bundle.version,
                    "starting from the backup bundle in the state directory (fail static); catching up with the control plane in the background"
                );
                ready
            }
            None => {
                tracing::error!(control_plane.url = %agent.control_plane(), gateway.id = %agent.gateway_id(), "not configured: no backup bundle and no configuration received yet; the proxy and admin listeners stay closed until the first valid bundle arrives");
                agent.first_bundle().await
            }
        };
        anyhow::Ok((agent, ready))
    };
    tokio::select! {
        r = started => r.map(Some),
        r = stop => r.map(|()| None),
    }
}
