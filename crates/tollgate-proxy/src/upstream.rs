//! Upstream connections. The pooled HTTP client (hyper-util's legacy client,
//! pooled per scheme+host+port, keep-alive, HTTP/2 when ALPN picks it) uses a
//! connector that resolves the host itself with [`dns::resolve_checked`] —
//! every address checked by the network guard — and dials only the addresses
//! that passed, in order, within `upstream.connect_timeout`. There is no
//! second lookup anywhere, so DNS rebinding cannot swap in a blocked address
//! between the check and the connect. The dialled address travels back on the
//! response as [`UpstreamAddr`] for the access log.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::body::RequestBody;
use crate::dns::{self, ResolveError, Resolver};
use crate::guard::NetworkGuard;

/// Why a connection to the upstream could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("resolve: {0}")]
    Resolve(#[from] ResolveError),
    #[error("connect timed out")]
    Timeout,
    #[error("connect: {0}")]
    Io(io::Error),
    #[error("tls: {0}")]
    Tls(io::Error),
    #[error("invalid upstream host")]
    InvalidHost,
}

/// The address the request was actually sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamAddr(pub SocketAddr);

/// Strips the brackets `Uri::host` keeps around IPv6 literals.
pub fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Resolves `host` (guard-checked) and connects to the first address that
/// answers, all within `timeout` (DNS has its own timeout).
pub async fn connect_pinned(
    resolver: &Resolver,
    guard: &NetworkGuard,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let addrs = dns::resolve_checked(resolver, guard, host, port).await?;
    let attempt = async {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, addr));
                }
                Err(e) => last = e,
            }
        }
        Err(ConnectError::Io(last))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

struct Inner {
    resolver: Arc<Resolver>,
    guard: Arc<NetworkGuard>,
    tls: TlsConnector,
    connect_timeout: Duration,
}

/// The pinned, guard-checked connector behind the pooled client.
#[derive(Clone)]
pub struct Connector(Arc<Inner>);

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let host = bare_host(uri.host().ok_or(ConnectError::InvalidHost)?).to_owned();
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let (tcp, addr) = connect_pinned(
                &inner.resolver,
                &inner.guard,
                &host,
                port,
                inner.connect_timeout,
            )
            .await?;
            if !https {
                return Ok(UpstreamIo {
                    io: TokioIo::new(Stream::Plain(tcp)),
                    addr,
                    h2: false,
                });
            }
            let name = ServerName::try_from(host).map_err(|_| ConnectError::InvalidHost)?;
            let handshake = inner.tls.connect(name, tcp);
            let tls = tokio::time::timeout(inner.connect_timeout, handshake)
                .await
                .map_err(|_| ConnectError::Timeout)?
                .map_err(ConnectError::Tls)?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(UpstreamIo {
                io: TokioIo::new(Stream::Tls(Box::new(tls))),
                addr,
                h2,
            })
        })
    }
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connected upstream socket as hyper sees it.
pub struct UpstreamIo {
    io: TokioIo<Stream>,
    addr: SocketAddr,
    h2: bool,
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let c = Connected::new().extra(UpstreamAddr(self.addr));
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Everything needed to reach upstreams under one configuration.
pub struct Upstream {
    pub client: Client<Connector, RequestBody>,
    /// HTTP/2 with prior knowledge (h2c) on the same connector, for gRPC calls to `http://`
    /// upstreams (handler.rs `forward`, upgrade.rs `is_grpc`).
    pub h2c: Client<Connector, RequestBody>,
    /// The guarded connector behind `client`, for other clients on the same
    /// path (the OAuth token fetcher).
    pub connector: Connector,
    pub resolver: Arc<Resolver>,
    pub guard: Arc<NetworkGuard>,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
}

impl Upstream {
    pub fn new(
        cfg: &tollgate_config::Upstream,
        resolver: Arc<Resolver>,
        guard: Arc<NetworkGuard>,
        tls: Arc<ClientConfig>,
    ) -> Self {
        let connect_timeout = cfg.connect_timeout.get();
        let connector = Connector(Arc::new(Inner {
            resolver: resolver.clone(),
            guard: guard.clone(),
            tls: TlsConnector::from(tls),
            connect_timeout,
        }));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.idle_timeout.get())
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(cfg.idle_timeout.get())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector.clone());
        Self {
            client,
            h2c,
            connector,
            resolver,
            guard,
            connect_timeout,
            response_header_timeout: cfg.response_header_timeout.get(),
        }
    }
}
