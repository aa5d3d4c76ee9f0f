//! `tollgate run`: load the configuration, bind the listeners, serve until
//! SIGTERM/SIGINT, then drain gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tollgate_proxy::reload::{ConfigSource, Reloader, load_policy};
use tollgate_proxy::state::Gateway;
use tollgate_telemetry::{AccessLog, Metrics};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file or directory. Without it, the embedded default runs.
    #[arg(long, short = 'c', env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Override `listen.proxy` (e.g. 127.0.0.1:0 for an ephemeral port).
    #[arg(long)]
    proxy_listen: Option<SocketAddr>,
    /// Override `listen.admin`.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

pub fn main(args: RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let source = match &args.config {
        Some(p) => ConfigSource::Path(p.clone()),
        None => ConfigSource::Embedded,
    };
    let policy = load_policy(&source, 1)
        .map_err(|errors| anyhow::anyhow!("invalid configuration\n{errors}"))?;
    tollgate_telemetry::init_tracing(&policy.config().logging.level);

    let proxy_addr = args.proxy_listen.unwrap_or(policy.config().listen.proxy);
    let admin_addr = args.admin_listen.unwrap_or(policy.config().listen.admin);
    if !admin_addr.ip().is_loopback() && policy.config().admin.token.is_none() {
        anyhow::bail!("admin listener {admin_addr} is not loopback: set admin.token to protect it");
    }
    let proxy_listener = TcpListener::bind(proxy_addr)
        .await
        .with_context(|| format!("cannot bind the proxy listener on {proxy_addr}"))?;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("cannot bind the admin listener on {admin_addr}"))?;
    let own = vec![proxy_listener.local_addr()?, admin_listener.local_addr()?];

    let metrics = Arc::new(Metrics::new());
    let access_log = AccessLog::open(&policy.config().logging.access_log, Arc::clone(&metrics))
        .with_context(|| {
            format!(
                "cannot open the access log {}",
                policy.config().logging.access_log
            )
        })?;
    let gateway = Gateway::new(policy, Arc::clone(&metrics), access_log.clone(), &own)
        .context("cannot start the gateway")?;
    let reloader = Reloader::new(source.clone(), Arc::clone(&gateway), own.clone(), 1);
    tollgate_proxy::reload::spawn_sighup(Arc::clone(&reloader))
        .context("cannot install the SIGHUP handler")?;
    let _watcher = tollgate_proxy::reload::spawn_file_watcher(Arc::clone(&reloader));

    tracing::info!(
        listen.proxy = %own[0],
        listen.admin = %own[1],
        config.source = %source.describe(),
        "listening"
    );

    let admin_gateway = Arc::clone(&gateway);
    let admin_shutdown = Arc::clone(&gateway);
    let admin = tokio::spawn(tollgate_proxy::admin::serve_admin(
        admin_listener,
        admin_gateway,
        Arc::clone(&reloader),
        async move { admin_shutdown.shutdown.triggered().await },
    ));
    let proxy = tokio::spawn(tollgate_proxy::server::serve_proxy(
        proxy_listener,
        Arc::clone(&gateway),
    ));

    wait_for_signal().await?;
    tracing::info!(
        shutdown.grace_s = gateway.shutdown_grace().as_secs(),
        "shutting down: draining in-flight requests and tunnels"
    );
    gateway.shutdown.trigger();
    if let Err(e) = proxy.await {
        tracing::error!(error = %e, "proxy task failed");
    }
    if let Err(e) = admin.await {
        tracing::error!(error = %e, "admin task failed");
    }
    // Requests have drained: the counters are final. Keep long-window counters for the next
    // start, and leave the shared store's instance set so the others' fair share grows at once.
    match tollgate_proxy::persist::save(&gateway) {
        Ok(n) if n > 0 => tracing::info!(state.counters = n, "saved limit counters"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot save limit counters at shutdown"),
    }
    if let Some(g) = gateway.global.load_full() {
        g.leave().await;
    }
    access_log.flush();
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
