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
    /// Override `listen.proxy_tls.addr` (only when `listen.proxy_tls` is configured).
    #[arg(long)]
    proxy_tls_listen: Option<SocketAddr>,
    #[command(flatten)]
    managed: crate::managed::ManagedArgs,
}

pub fn main(args: RunArgs) -> ExitCode {
    let runtime = match crate::runtime::build(crate::runtime::Flavor::Server) {
        Ok(rt) => rt,
        Err(code) => return code,
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
    let metrics = Arc::new(Metrics::new());
    // Managed gateway: the first configuration is the verified backup or the first bundle from
    // the control plane; nothing listens before that (see managed.rs).
    let mut managed = None;
    let (source, policy, initial_version) = if let Some(url) = &args.managed.control_plane {
        tollgate_telemetry::init_tracing("info");
        let started =
            crate::managed::start(&args.managed, url, Arc::clone(&metrics), wait_for_signal());
        let Some((agent, ready)) = started.await? else {
            return Ok(());
        };
        let version = ready.signed.bundle.version;
        managed = Some((agent, ready.signed, ready.from_backup));
        let source = ConfigSource::Managed {
            control_plane: url.clone(),
        };
        (source, ready.policy, version)
    } else {
        let source = match &args.config {
            Some(p) => ConfigSource::Path(p.clone()),
            None => ConfigSource::Embedded,
        };
        let policy = load_policy(&source, 1)
            .map_err(|errors| anyhow::anyhow!("invalid configuration\n{errors}"))?;
        (source, policy, 1)
    };
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
    let mut own = vec![proxy_listener.local_addr()?, admin_listener.local_addr()?];
    // The TLS listener's address is read at start; its certificates on every reload.
    let tls_listener = match &policy.config().listen.proxy_tls {
        Some(t) => {
            let addr = args.proxy_tls_listen.unwrap_or(t.addr);
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the TLS proxy listener on {addr}"))?;
            own.push(l.local_addr()?);
            Some(l)
        }
        None => None,
    };

    let access_log = AccessLog::open(&policy.config().logging.access_log, Arc::clone(&metrics))
        .with_context(|| {
            format!(
                "cannot open the access log {}",
                policy.config().logging.access_log
            )
        })?;
    let gateway = Gateway::new(policy, Arc::clone(&metrics), access_log.clone(), &own)
        .context("cannot start the gateway")?;
    let reloader = Reloader::new(
        source.clone(),
        Arc::clone(&gateway),
        own.clone(),
        initial_version,
    );
    let mut usage_agent = None;
    let _agent_task = match managed {
        // Managed: the agent applies new bundles; a local reload has nothing to load.
        Some((agent, signed, from_backup)) => {
            // Usage and audit events for the control plane (aggregated per request, buffered
            // on disk, uploaded exactly once; see tollgate-control agent/usage.rs).
            let usage = Arc::new(tollgate_proxy::usage::Usage::new());
            gateway.usage.store(Some(Arc::clone(&usage)));
            agent
                .spawn_usage(usage, Arc::clone(&gateway), args.managed.usage_options())
                .context("cannot open the usage buffer in --state-dir")?;
            usage_agent = Some(Arc::clone(&agent));
            agent.started_with(&signed, from_backup);
            Some(agent.spawn(Arc::clone(&reloader)))
        }
        None => {
            tollgate_proxy::reload::spawn_sighup(Arc::clone(&reloader))
                .context("cannot install the SIGHUP handler")?;
            None
        }
    };
    let _watcher = tollgate_proxy::reload::spawn_file_watcher(Arc::clone(&reloader));

    tracing::info!(
        listen.proxy = %own[0],
        listen.admin = %own[1],
        listen.proxy_tls = %own.get(2).map_or_else(String::new, ToString::to_string),
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

    let proxy_tls = tls_listener
        .map(|l| tokio::spawn(tollgate_proxy::serve_proxy_tls(l, Arc::clone(&gateway))));

    wait_for_signal().await?;
    tracing::info!(
        shutdown.grace_s = gateway.shutdown_grace().as_secs(),
        "shutting down: draining in-flight requests and tunnels"
    );
    gateway.shutdown.trigger();
    if let Err(e) = proxy.await {
        tracing::error!(error = %e, "proxy task failed");
    }
    if let Some(t) = proxy_tls
        && let Err(e) = t.await
    {
        tracing::error!(error = %e, "TLS proxy task failed");
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
    // The last interval's usage goes to the disk buffer; the next start uploads it.
    if let Some(agent) = &usage_agent
        && let Err(e) = agent.flush_usage()
    {
        tracing::error!(error = %e, "cannot buffer the last usage at shutdown");
    }
    // Spans of the last requests are still queued: send them (bounded, the collector may be down).
    if let Some(t) = gateway.tracer.load_full()
        && !t.flush(std::time::Duration::from_secs(5)).await
    {
        tracing::warn!("span export did not finish within 5s at shutdown; the rest is dropped");
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
