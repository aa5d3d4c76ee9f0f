//! Intercepted CONNECT tunnels (`tls: intercept`). The CONNECT itself went
//! through the pipeline like any tunnel; Tollgate answers `200` without
//! connecting anywhere, then terminates the client's TLS inside the tunnel
//! with a leaf certificate minted for the host (mint.rs, ALPN `h2` and
//! `http/1.1`) and serves the decrypted stream with the same hyper service as
//! the listener. Every request inside runs the full pipeline as kind
//! `intercept` — a forward-proxy request to `https://<CONNECT host>:<port>` —
//! is sent upstream through the normal upstream client (its certificate
//! verified as usual) and gets its own access-log line.
//!
//! What a client sees when refused:
//! - first bytes in the tunnel are not a TLS handshake record → the tunnel is
//!   closed without a reply (log `reason: not_tls` on the CONNECT line);
//! - ClientHello SNI differs from the CONNECT host → a fatal TLS alert, the
//!   tunnel closes (`reason: tls_sni_mismatch`); no SNI → the CONNECT host is
//!   used (clients send no SNI for IP addresses);
//! - handshake not finished within `server.header_read_timeout`, or failed →
//!   closed (`tls_handshake_failed`);
//! - inside the tunnel, a request whose `Host` / `:authority` does not name
//!   the CONNECT host (and port, unless 443) → `400 bad_request`, so `Host`
//!   cannot pivot to another destination; a CONNECT inside the tunnel → `400`.
//!
//! Identity: the inner requests carry the CONNECT's identity — the CONNECT's
//! `Proxy-Authorization` is set on each of them (replacing any sent inside
//! the tunnel), the peer address is the tunnel client's and, on the TLS
//! listener, so is its verified client certificate — they identify as the
//! same consumer. The header is stripped before going upstream, like
//! any `Proxy-Authorization`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HOST, HeaderValue, PROXY_AUTHORIZATION};
use http::{Method, Response};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::LazyConfigAcceptor;
use tollgate_config::{SecretRef, TlsIntercept, TlsMode};
use tollgate_policy::{ErrorCode, GatewayError, Target};

use crate::body::ProxyBody;
use crate::connect::{Activity, Meter, Metered};
use crate::framing::Sniffer;
use crate::handler::{self, ConnCtx};
use crate::mint::{MintError, Minter};
use crate::observe::{BytesIn, Completion};
use crate::state::Active;

/// Why the interception CA could not be loaded (a configuration build error,
/// located at [`InterceptError::key_path`], so the messages omit the key).
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("{path}: {message}")]
    CaCert { path: String, message: String },
    #[error("{0}")]
    CaKey(String),
    #[error("{0}")]
    Mint(#[from] MintError),
}

impl InterceptError {
    pub fn key_path(&self) -> &'static str {
        match self {
            Self::CaCert { .. } => "tls_intercept.ca_cert",
            Self::CaKey(_) => "tls_intercept.ca_key",
            Self::Mint(_) => "tls_intercept",
        }
    }
}

/// The loaded CA and leaf cache for one configuration.
pub struct Interceptor {
    minter: Minter,
    /// What it was built from, to keep the cache across reloads that change nothing.
    source: (String, tollgate_config::Secret, Duration, usize),
}

/// `ca_key`: `${file:..}` / `${env:..}` hold the PEM; a plain value is a path
/// unless it is itself a PEM block.
fn read_key(r: &SecretRef) -> Result<tollgate_config::Secret, InterceptError> {
    let resolved = r
        .resolve()
        .map_err(|e| InterceptError::CaKey(e.to_string()))?;
    match r {
        SecretRef::Literal(path) if !resolved.expose().contains("-----BEGIN") => {
            std::fs::read_to_string(path)
                .map(tollgate_config::Secret::new)
                .map_err(|e| InterceptError::CaKey(format!("{path}: {e}")))
        }
        _ => Ok(resolved),
    }
}

impl Interceptor {
    /// Reads the CA files. `prev` is reused (with its minted leaves) when
    /// nothing it was built from changed.
    pub fn build(
        cfg: &TlsIntercept,
        prev: Option<&Arc<Interceptor>>,
    ) -> Result<Arc<Interceptor>, InterceptError> {
        let cert = std::fs::read_to_string(&cfg.ca_cert).map_err(|e| InterceptError::CaCert {
            path: cfg.ca_cert.clone(),
            message: e.to_string(),
        })?;
        let key = read_key(&cfg.ca_key)?;
        let source = (cert, key, cfg.leaf_ttl.get(), cfg.leaf_cache);
        if let Some(p) = prev
            && p.source == source
        {
            return Ok(p.clone());
        }
        let minter =
            Minter::new(&source.0, source.1.expose(), source.2, source.3).map_err(|e| match e {
                MintError::CaCertPem(m) => InterceptError::CaCert {
                    path: cfg.ca_cert.clone(),
                    message: format!("not a PEM certificate ({m})"),
                },
                MintError::CaKeyPem(m) => {
                    InterceptError::CaKey(format!("not a PEM private key ({m})"))
                }
                other => InterceptError::Mint(other),
            })?;
        Ok(Arc::new(Interceptor { minter, source }))
    }

    /// Leaves minted so far (cache hits excluded).
    pub fn minted(&self) -> u64 {
        self.minter.minted()
    }
}

/// The interceptor for a CONNECT to `api`, when that API has `tls: intercept`.
pub fn for_api(active: &Active, api: Option<&str>) -> Option<Arc<Interceptor>> {
    let interceptor = active.intercept.as_ref()?;
    let api = api?;
    let cfg = active.policy.config().apis.iter().find(|a| a.name == api)?;
    (cfg.tls == TlsMode::Intercept).then(|| interceptor.clone())
}

/// What the requests inside an intercepted tunnel inherit from its CONNECT.
pub struct Tunnel {
    /// Lower-case host name (or IP address) the CONNECT named.
    pub host: String,
    pub port: u16,
    /// The CONNECT's `Proxy-Authorization`, set on every inner request.
    pub proxy_authorization: Option<HeaderValue>,
}

fn bad_request(detail: &'static str) -> GatewayError {
    GatewayError::new(ErrorCode::BadRequest, detail)
}

/// Does `authority` (`host[:port]`) name the tunnel's host and port?
fn names_tunnel(authority: &str, t: &Tunnel) -> bool {
    let Ok(a) = authority.parse::<http::uri::Authority>() else {
        return false;
    };
    let host = crate::upstream::bare_host(a.host());
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case(&t.host) && a.port_u16().unwrap_or(443) == t.port
}

/// Prepares an inner request: refuses CONNECT and any `Host` / `:authority`
/// that names another destination, and sets the CONNECT's identity.
pub(crate) fn prepare(parts: &mut http::request::Parts, t: &Tunnel) -> Result<(), GatewayError> {
    if parts.method == Method::CONNECT {
        return Err(bad_request(
            "CONNECT is not allowed inside an intercepted tunnel",
        ));
    }
    let mut named = false;
    if let Some(a) = parts.uri.authority() {
        if !names_tunnel(a.as_str(), t) {
            return Err(bad_request(
                "the request authority must name the CONNECT host",
            ));
        }
        named = true;
    }
    for h in parts.headers.get_all(HOST) {
        let ok = h.to_str().is_ok_and(|v| names_tunnel(v, t));
        if !ok {
            return Err(bad_request("the Host header must name the CONNECT host"));
        }
        named = true;
    }
    if !named {
        return Err(bad_request("the request has no Host header"));
    }
    parts.headers.remove(PROXY_AUTHORIZATION);
    if let Some(v) = &t.proxy_authorization {
        parts.headers.insert(PROXY_AUTHORIZATION, v.clone());
    }
    Ok(())
}

/// Answers the CONNECT with 200 and spawns the interception once the client's
/// connection is handed over. One access-log line (kind `connect`) is written
/// when the tunnel closes; each inner request writes its own.
pub async fn open(
    ctx: &Arc<ConnCtx>,
    active: &Arc<Active>,
    interceptor: Arc<Interceptor>,
    target: &Target,
    proxy_authorization: Option<HeaderValue>,
    on_upgrade: Option<OnUpgrade>,
    mut done: Completion,
) -> Response<ProxyBody> {
    let Some(on_upgrade) = on_upgrade else {
        return handler::deny(
            done,
            &bad_request("this connection cannot be upgraded to a tunnel"),
        );
    };
    done.status = 200;
    // Inner requests take their own concurrency slots; the tunnel holding one
    // would starve them (`per_consumer: 1` could never be met).
    done.concurrency = None;
    let host = target.host.to_ascii_lowercase();
    let tunnel = Arc::new(Tunnel {
        host: host.strip_suffix('.').unwrap_or(&host).to_owned(),
        port: target.port,
        proxy_authorization,
    });
    let cfg = active.policy.config();
    let limits = Limits {
        handshake: cfg.server.header_read_timeout.get(),
        idle: cfg.connect.idle_timeout.get(),
        server: cfg.server.clone(),
    };
    let gateway = ctx.gateway.clone();
    let (peer, local) = (ctx.peer, ctx.local);
    let client_cert = ctx.client_cert.clone();
    let track = gateway.shutdown.tracker().track();
    tokio::spawn(async move {
        let _track = track;
        let api = done.api.clone();
        let api_label = api.as_deref().unwrap_or("");
        let _gauge = gateway.metrics.tunnel_opened(api_label);
        let meter = Arc::new(Meter::default());
        let reason = match on_upgrade.await {
            Ok(upgraded) => {
                let io = Metered::new(TokioIo::new(upgraded), meter.clone());
                let conn = InnerConn {
                    gateway: gateway.clone(),
                    peer,
                    local,
                    tunnel,
                    client_cert,
                };
                run(io, conn, &interceptor, &limits, &meter.activity).await
            }
            Err(e) => {
                tracing::debug!(request.id = %done.request_id, error = %e, "CONNECT upgrade failed");
                Some("client_aborted")
            }
        };
        if let Some(r) = reason {
            tracing::info!(
                request.id = %done.request_id,
                net.host = %done.host,
                tunnel.reason = r,
                "intercepted tunnel refused"
            );
        }
        let (up, down) = meter.totals();
        gateway.metrics.tunnel_bytes(api_label, up, down);
        done.bytes_in = BytesIn::Fixed(up);
        done.reason = reason;
        done.finish(down, true);
    });
    Response::new(ProxyBody::empty())
}

struct Limits {
    handshake: Duration,
    idle: Duration,
    server: tollgate_config::Server,
}

struct InnerConn {
    gateway: Arc<crate::state::Gateway>,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    tunnel: Arc<Tunnel>,
    client_cert: Option<Arc<tollgate_policy::ClientCert>>,
}

/// The TLS record type of a handshake; every ClientHello starts with it.
const TLS_HANDSHAKE: u8 = 0x16;

/// Terminates TLS and serves the inner requests. Returns why the tunnel was
/// refused, if it was.
async fn run<S>(
    mut io: S,
    conn: InnerConn,
    interceptor: &Interceptor,
    limits: &Limits,
    activity: &Activity,
) -> Option<&'static str>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.handshake, io.read(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(Ok(_)) => return None, // closed before sending anything
        Ok(Err(_)) | Err(_) => return Some("tls_handshake_failed"),
    }
    if first[0] != TLS_HANDSHAKE {
        return Some("not_tls");
    }
    let io = Prefixed {
        prefix: Some(first[0]),
        inner: io,
    };
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(limits.handshake, acceptor).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => return Some("tls_handshake_failed"),
    };
    let host = &conn.tunnel.host;
    let sni_ok = start.client_hello().server_name().is_none_or(|sni| {
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        sni.eq_ignore_ascii_case(host)
    });
    let provider = interceptor.minter.provider().clone();
    if !sni_ok {
        // No certificate: rustls answers the ClientHello with a fatal alert.
        if let Ok(cfg) = server_config(provider, None) {
            let _ = tokio::time::timeout(limits.handshake, start.into_stream(cfg)).await;
        }
        return Some("tls_sni_mismatch");
    }
    let leaf = match interceptor.minter.leaf(host) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(net.host = %host, error = %e, "cannot mint a certificate");
            return Some("tls_mint_failed");
        }
    };
    let Ok(cfg) = server_config(provider, Some(leaf)) else {
        return Some("tls_handshake_failed");
    };
    let tls = match tokio::time::timeout(limits.handshake, start.into_stream(cfg)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(net.host = %host, error = %e, "intercepted TLS handshake failed");
            return Some("tls_handshake_failed");
        }
        Err(_) => return Some("tls_handshake_failed"),
    };
    serve(tls, conn, limits, activity).await;
    None
}

/// Serves HTTP/1.1 or HTTP/2 on the decrypted stream until it closes, idles
/// for `connect.idle_timeout`, or shutdown ends it.
async fn serve<S>(tls: S, conn: InnerConn, limits: &Limits, activity: &Activity)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, framing) = Sniffer::new(tls);
    let gateway = conn.gateway.clone();
    let ctx = Arc::new(ConnCtx {
        gateway: conn.gateway,
        peer: conn.peer,
        local: conn.local,
        framing,
        tunnel: Some(conn.tunnel),
        client_cert: conn.client_cert,
    });
    let builder = crate::server::builder(&limits.server);
    let svc = service_fn(move |req| call(ctx.clone(), req));
    let served = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(served);
    let shutdown = &gateway.shutdown;
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "intercepted connection ended with an error");
            }
            return;
        }
        _ = activity.idle_for(limits.idle) => {
            tracing::debug!("intercepted tunnel idle timeout");
            return;
        }
        _ = shutdown.triggered() => {}
    }
    served.as_mut().graceful_shutdown();
    tokio::select! {
        _ = served.as_mut() => {}
        _ = shutdown.forced() => {}
    }
}

type HandleFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> + Send>>;

/// The handler behind a named (boxed) future type: `handle` awaits `open`,
/// which spawns `serve`, which calls `handle` — without the box that cycle
/// would make the compiler infer `handle`'s future type from itself.
fn call(ctx: Arc<ConnCtx>, req: http::Request<hyper::body::Incoming>) -> HandleFuture {
    Box::pin(handler::handle(ctx, req))
}

/// Presents `leaf` (or nothing, to refuse the handshake with an alert).
#[derive(Debug)]
struct Leaf(Option<Arc<CertifiedKey>>);

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
}

fn server_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    leaf: Option<Arc<CertifiedKey>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Leaf(leaf)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A stream with one already-read byte put back in front.
struct Prefixed<S> {
    prefix: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() > 0
            && let Some(b) = this.prefix.take()
        {
            buf.put_slice(&[b]);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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

    fn tunnel(host: &str, port: u16) -> Tunnel {
        Tunnel {
            host: host.to_owned(),
            port,
            proxy_authorization: Some(HeaderValue::from_static("Bearer k")),
        }
    }

    fn parts(host: &str) -> http::request::Parts {
        http::Request::get("/x")
            .header(HOST, host)
            .header(PROXY_AUTHORIZATION, "Bearer inner")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn a_reload_that_changes_nothing_keeps_the_minted_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = crate::mint::write_ca(dir.path(), false).unwrap();
        let cfg = TlsIntercept {
            ca_cert: crt.display().to_string(),
            ca_key: SecretRef::parse(&format!("${{file:{}}}", key.display())).unwrap(),
            leaf_ttl: tollgate_config::Duration::from_millis(3_600_000),
            leaf_cache: 10,
        };
        let first = Interceptor::build(&cfg, None).unwrap();
        let same = Interceptor::build(&cfg, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        // A new CA on disk (re-read on reload) builds a new interceptor.
        crate::mint::write_ca(dir.path(), true).unwrap();
        let renewed = Interceptor::build(&cfg, Some(&first)).unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
    }

    #[test]
    fn host_must_name_the_connect_host() {
        let t = tunnel("api.example", 443);
        let mut ok = parts("API.example");
        prepare(&mut ok, &t).unwrap();
        assert_eq!(ok.headers[PROXY_AUTHORIZATION], "Bearer k");
        assert!(prepare(&mut parts("api.example:443"), &t).is_ok());
        assert!(prepare(&mut parts("other.example"), &t).is_err());
        assert!(prepare(&mut parts("api.example:8443"), &t).is_err());
        let t2 = tunnel("api.example", 8443);
        assert!(prepare(&mut parts("api.example"), &t2).is_err());
        assert!(prepare(&mut parts("api.example:8443"), &t2).is_ok());
    }
}
