//! CONNECT tunnels (TLS passthrough). The destination went through the same
//! pipeline as L7 traffic (consumer, API match by host, switches, port
//! allowlist); here Tollgate resolves and guard-checks the host, connects to
//! an address that passed, answers `200`, and copies bytes both ways until
//! either side closes, nothing moves for `connect.idle_timeout`, or the
//! shutdown grace period ends. One access-log line is written when the
//! tunnel closes, with the bytes each way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tollgate_policy::{GatewayError, Target};

use crate::body::ProxyBody;
use crate::handler::ConnCtx;
use crate::observe::{BytesIn, Completion, count_connect_error};
use crate::respond::connect_failure;
use crate::state::Active;
use crate::upstream::connect_pinned;

/// Connects to the tunnel's target and, on success, answers 200 and spawns
/// the byte copy once the client's connection is handed over.
pub async fn open(
    ctx: &Arc<ConnCtx>,
    active: &Arc<Active>,
    target: &Target,
    on_upgrade: Option<OnUpgrade>,
    mut done: Completion,
) -> Response<ProxyBody> {
    let up = &active.upstream;
    let connected = connect_pinned(
        &up.resolver,
        &up.guard,
        &target.host,
        target.port,
        up.connect_timeout,
    )
    .await;
    let (stream, addr) = match connected {
        Ok(c) => c,
        Err(e) => {
            count_connect_error(&ctx.gateway, &e);
            return crate::handler::deny(done, &connect_failure(&e));
        }
    };
    let Some(on_upgrade) = on_upgrade else {
        let err = GatewayError::new(
            tollgate_policy::ErrorCode::BadRequest,
            "this connection cannot be upgraded to a tunnel",
        );
        return crate::handler::deny(done, &err);
    };
    done.upstream_addr = Some(addr);
    done.upstream_duration = Some(done.start.elapsed());
    done.status = 200;
    let idle = active.policy.config().connect.idle_timeout.get();
    let gateway = ctx.gateway.clone();
    let track = gateway.shutdown.tracker().track();
    tokio::spawn(async move {
        let _track = track;
        let api = done.api.clone();
        let api_label = api.as_deref().unwrap_or("");
        let _gauge = gateway.metrics.tunnel_opened(api_label);
        let (up_bytes, down_bytes) = match on_upgrade.await {
            Ok(upgraded) => run_tunnel(TokioIo::new(upgraded), stream, idle, &gateway).await,
            Err(e) => {
                tracing::debug!(request.id = %done.request_id, error = %e, "CONNECT upgrade failed");
                done.reason = Some("client_aborted");
                (0, 0)
            }
        };
        gateway
            .metrics
            .tunnel_bytes(api_label, up_bytes, down_bytes);
        done.bytes_in = BytesIn::Fixed(up_bytes);
        done.finish(down_bytes, true);
    });
    Response::new(ProxyBody::empty())
}

/// Copies until EOF both ways, idle timeout, or forced shutdown. Returns
/// (client→upstream, upstream→client) byte counts.
async fn run_tunnel<C>(
    client: C,
    upstream: TcpStream,
    idle: Duration,
    gw: &crate::state::Gateway,
) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let meter = Arc::new(Meter::default());
    // Everything read from the upstream is written to the client, so metering
    // the client side alone counts both directions and sees all activity.
    let mut client = Metered::new(client, meter.clone());
    let mut upstream = upstream;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel closed with an error");
            }
        }
        _ = meter.activity.idle_for(idle) => tracing::debug!("tunnel idle timeout"),
        _ = gw.shutdown.forced() => tracing::debug!("tunnel closed at the end of the shutdown grace period"),
    }
    meter.totals()
}

/// When bytes last moved in either direction (also used by intercept.rs).
pub(crate) struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    pub(crate) fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
    /// Resolves once nothing has moved for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Bytes each way through a tunnel (from and to the client) and when they
/// last moved (also used by intercept.rs).
pub(crate) struct Meter {
    pub(crate) read: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) activity: Activity,
}

impl Default for Meter {
    fn default() -> Self {
        Self {
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            activity: Activity::new(),
        }
    }
}

impl Meter {
    /// (bytes read from the client, bytes written to the client).
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// The client side of a tunnel, metered.
pub(crate) struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, meter: Arc<Meter>) -> Self {
        Self { inner, meter }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.meter.read.fetch_add(n as u64, Ordering::Relaxed);
            this.meter.activity.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res
            && *n > 0
        {
            this.meter.written.fetch_add(*n as u64, Ordering::Relaxed);
            this.meter.activity.touch();
        }
        res
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_timer_follows_activity() {
        let a = Activity::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        a.touch();
        let started = Instant::now();
        a.idle_for(Duration::from_secs(10)).await;
        assert!(Instant::now() >= started + Duration::from_secs(10));
    }
}
