//! The proxy listener: accept loop, one task per connection, hyper serving
//! HTTP/1.1 and HTTP/2 (prior knowledge) on the same port with upgrades
//! enabled for CONNECT.
//!
//! Limits and what the client sees:
//! - request head larger than `server.max_header_bytes`, or more than
//!   `server.max_headers` headers → `431 headers_too_large` from the handler;
//!   hyper is given twice these limits as a hard backstop, and beyond that it
//!   answers a bare `431` itself (no `tollgate-error`, no access-log line),
//!   as it does for a request line it cannot parse (bare `400`);
//! - head not complete within `server.header_read_timeout` → the connection
//!   is closed without a response (hyper has no 408);
//! - `server.max_connections` concurrent connections: further connections
//!   wait in the listen backlog until one closes.
//!
//! The `server.*` settings are read when the listener starts; changing them
//! needs a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::framing::Sniffer;
use crate::handler::{self, ConnCtx};
use crate::shutdown::{DRAIN_WINDOW, TrackGuard};
use crate::state::Gateway;

/// hyper refuses read buffers below 8 KiB.
const MIN_BUF: usize = 8 * 1024;

pub(crate) fn builder(cfg: &tollgate_config::Server) -> auto::Builder<TokioExecutor> {
    // Twice the configured limits: the handler enforces the configured ones
    // with a proper `431 headers_too_large`; hyper's bare 431 is the backstop.
    let max_head = usize::try_from(cfg.max_header_bytes.get().saturating_mul(2))
        .unwrap_or(usize::MAX)
        .max(MIN_BUF);
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout.get())
        .max_buf_size(max_head)
        .max_headers(cfg.max_headers.saturating_mul(2))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .keep_alive_interval(None);
    b
}

/// Serves the proxy on `listener` until shutdown is triggered and every
/// connection and tunnel has finished (or the grace period ended).
pub async fn serve_proxy(listener: TcpListener, gateway: Arc<Gateway>) {
    let server_cfg = gateway.active.load().policy.config().server.clone();
    let builder = Arc::new(builder(&server_cfg));
    let limit = Arc::new(Semaphore::new(server_cfg.max_connections.max(1)));
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "proxy listener has no local address");
            return;
        }
    };
    let stop = gateway.shutdown.triggered();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut stop => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let track = gateway.shutdown.tracker().track();
        let (stream, framing) = Sniffer::new(stream);
        let ctx = Arc::new(ConnCtx {
            gateway: gateway.clone(),
            peer,
            local,
            framing,
            tunnel: None,
            client_cert: None,
        });
        tokio::spawn(serve_connection(
            stream,
            ctx,
            builder.clone(),
            permit,
            track,
        ));
    }
    drop(listener);
    let grace = gateway.shutdown_grace();
    let tracker = gateway.shutdown.tracker().clone();
    if tokio::time::timeout(grace, tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::info!(
            open = tracker.live(),
            "shutdown grace period over; closing what is still open"
        );
        gateway.shutdown.force();
        // Forced connections and tunnels drop their sockets at once.
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait_idle()).await;
    }
}

/// Serves one accepted connection (plain, or TLS from tls_listener.rs).
pub(crate) async fn serve_connection<S>(
    stream: Sniffer<S>,
    ctx: Arc<ConnCtx>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    _permit: OwnedSemaphorePermit,
    _track: TrackGuard,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let gateway = ctx.gateway.clone();
    let _gauge = gateway.metrics.connection_opened();
    let peer: SocketAddr = ctx.peer;
    let io = TokioIo::new(stream);
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handler::handle(svc_ctx.clone(), req));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let shutdown = &gateway.shutdown;
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(net.peer = %peer, error = %e, "client connection ended with an error");
            }
            return;
        }
        _ = shutdown.triggered() => {}
    }
    // Draining: new requests on this connection are answered 503 for a short
    // window, then the connection is shut down gracefully.
    let grace = gateway.shutdown_grace();
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = tokio::time::sleep(DRAIN_WINDOW.min(grace)) => {}
        _ = shutdown.forced() => return,
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.forced() => {}
    }
}
