//! The OTLP exporter: one background task that batches queued spans and sends them to the
//! collector over one kept-alive connection — gRPC (`TraceService/Export`, HTTP/2, 5-byte
//! length-prefixed message, `grpc-status` trailer) or HTTP/protobuf (`POST /v1/traces`,
//! HTTP/1.1). `https://` endpoints use TLS with the system's trust store.
//!
//! Nothing here runs on the request path: requests only `try_send` into the queue. A failed
//! export drops its batch (counted) and the next one reconnects; failures are logged at most
//! once per [`WARN_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tollgate_config::{OtlpProtocol, Tracing};
use tollgate_telemetry::Metrics;

use crate::otlp::{Resource, encode_request};
use crate::span::SpanData;

/// Failed exports are logged at most this often (each one is counted).
const WARN_EVERY: Duration = Duration::from_secs(60);
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const HTTP_PATH: &str = "/v1/traces";
/// Bytes of an error response kept for the log line.
const MAX_ERROR_TEXT: usize = 200;

/// Why the exporter cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("telemetry.tracing.endpoint: {0}")]
    Endpoint(String),
    #[error("telemetry.tracing.headers.{name}: {reason}")]
    Header { name: String, reason: String },
    #[error("telemetry.tracing: TLS set-up: {0}")]
    Tls(String),
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("connect to the collector: {0}")]
    Connect(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP exchange: {0}")]
    Http(String),
    #[error("collector answered HTTP {status}: {text}")]
    Status { status: u16, text: String },
    #[error("collector answered grpc-status {status}: {message}")]
    Grpc { status: String, message: String },
}

/// Where the collector is.
struct Endpoint {
    https: bool,
    host: String,
    port: u16,
    uri: Uri,
}

fn endpoint(cfg: &Tracing) -> Result<Endpoint, BuildError> {
    let bad = |m: &str| BuildError::Endpoint(m.to_owned());
    let parsed: Uri = cfg
        .endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| BuildError::Endpoint(e.to_string()))?;
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let auth = parsed.authority().ok_or_else(|| bad("has no host"))?;
    let host = auth.host().trim_matches(['[', ']']).to_owned();
    let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = match cfg.protocol {
        OtlpProtocol::Grpc => GRPC_PATH,
        OtlpProtocol::Http => match parsed.path() {
            "" | "/" => HTTP_PATH,
            p => p,
        },
    };
    let uri = format!(
        "{}://{}{}",
        if https { "https" } else { "http" },
        auth.as_str(),
        path
    )
    .parse()
    .map_err(|e: http::uri::InvalidUri| BuildError::Endpoint(e.to_string()))?;
    Ok(Endpoint {
        https,
        host,
        port,
        uri,
    })
}

fn tls_connector(protocol: OtlpProtocol) -> Result<tokio_rustls::TlsConnector, BuildError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(BuildError::Tls("no trusted root certificates found".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match protocol {
        OtlpProtocol::Grpc => vec![b"h2".to_vec()],
        OtlpProtocol::Http => vec![b"http/1.1".to_vec()],
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// The collector client: one connection, re-opened after a failure.
pub(crate) struct Client {
    endpoint: Endpoint,
    protocol: OtlpProtocol,
    tls: Option<tokio_rustls::TlsConnector>,
    headers: HeaderMap,
    timeout: Duration,
    conn: Option<Conn>,
}

impl Client {
    pub(crate) fn new(cfg: &Tracing) -> Result<Self, BuildError> {
        let endpoint = endpoint(cfg)?;
        let tls = if endpoint.https {
            Some(tls_connector(cfg.protocol)?)
        } else {
            None
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let header = |reason: String| BuildError::Header {
                name: name.clone(),
                reason,
            };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| header(e.to_string()))?;
            let secret = value.resolve().map_err(|e| header(e.to_string()))?;
            let mut v = HeaderValue::from_str(secret.expose())
                .map_err(|_| header("the value is not a valid header value".into()))?;
            v.set_sensitive(true);
            headers.append(n, v);
        }
        let (ctype, agent) = match cfg.protocol {
            OtlpProtocol::Grpc => ("application/grpc", "tollgate-otlp-grpc"),
            OtlpProtocol::Http => ("application/x-protobuf", "tollgate-otlp-http"),
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
        headers.insert(USER_AGENT, HeaderValue::from_static(agent));
        if cfg.protocol == OtlpProtocol::Grpc {
            headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        Ok(Self {
            endpoint,
            protocol: cfg.protocol,
            tls,
            headers,
            timeout: cfg.timeout.get(),
            conn: None,
        })
    }

    async fn connect(&self) -> Result<Conn, ExportError> {
        let e = &self.endpoint;
        let tcp = TcpStream::connect((e.host.as_str(), e.port))
            .await
            .map_err(|err| ExportError::Connect(err.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(tcp).await,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(e.host.clone())
                    .map_err(|err| ExportError::Connect(err.to_string()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|err| ExportError::Connect(format!("TLS: {err}")))?;
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<S>(&self, io: S) -> Result<Conn, ExportError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let failed = |err: hyper::Error| ExportError::Connect(err.to_string());
        match self.protocol {
            OtlpProtocol::Http => {
                let (send, conn) = http1::handshake(io).await.map_err(failed)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Conn::H1(send))
            }
            OtlpProtocol::Grpc => {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(failed)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(Conn::H2(send))
            }
        }
    }

    /// Sends one encoded `ExportTraceServiceRequest`, within the timeout. A kept-alive
    /// connection the collector closed meanwhile fails at once; the call is then tried once more
    /// on a new connection.
    async fn export(&mut self, message: Vec<u8>) -> Result<(), ExportError> {
        let body = match self.protocol {
            OtlpProtocol::Http => Bytes::from(message),
            OtlpProtocol::Grpc => {
                // gRPC message framing: uncompressed flag, 4-byte big-endian length, message.
                let mut b = BytesMut::with_capacity(message.len() + 5);
                b.put_u8(0);
                b.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
                b.put_slice(&message);
                b.freeze()
            }
        };
        let timeout = self.timeout;
        let attempt = async {
            let reused = self.conn.is_some();
            match self.exchange(body.clone()).await {
                Err(ExportError::Http(_)) if reused => {
                    self.conn = None;
                    self.exchange(body).await
                }
                other => other,
            }
        };
        let result = tokio::time::timeout(timeout, attempt).await;
        let result = result.unwrap_or(Err(ExportError::Timeout(timeout)));
        if result.is_err() {
            // The connection may be in any state: start afresh next time.
            self.conn = None;
        }
        result
    }

    async fn exchange(&mut self, body: Bytes) -> Result<(), ExportError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.headers_mut() = self.headers.clone();
        let ready = match &mut self.conn {
            Some(Conn::H1(s)) => s.ready().await.is_ok(),
            Some(Conn::H2(s)) => s.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            self.conn = Some(self.connect().await?);
        }
        let http = |e: hyper::Error| ExportError::Http(e.to_string());
        let resp = match &mut self.conn {
            Some(Conn::H1(s)) => {
                // HTTP/1.1 wants origin-form and a Host header.
                *req.uri_mut() = self
                    .endpoint
                    .uri
                    .path_and_query()
                    .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
                if let Some(a) = self.endpoint.uri.authority()
                    && let Ok(v) = HeaderValue::from_str(a.as_str())
                {
                    req.headers_mut().insert(http::header::HOST, v);
                }
                s.send_request(req).await.map_err(http)?
            }
            Some(Conn::H2(s)) => {
                *req.uri_mut() = self.endpoint.uri.clone();
                s.send_request(req).await.map_err(http)?
            }
            None => return Err(ExportError::Connect("no connection".into())),
        };
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.map_err(http)?;
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        if !parts.status.is_success() {
            return Err(ExportError::Status {
                status: parts.status.as_u16(),
                text: text(&data),
            });
        }
        if self.protocol == OtlpProtocol::Grpc {
            // A trailers-only response carries grpc-status in the headers.
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| parts.headers.get("grpc-status"));
            let Some(status) = status else {
                return Err(ExportError::Grpc {
                    status: "missing".into(),
                    message: "no grpc-status in the response".into(),
                });
            };
            if status.as_bytes() != b"0" {
                let message = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-message"))
                    .or_else(|| parts.headers.get("grpc-message"))
                    .map(|m| text(m.as_bytes()))
                    .unwrap_or_default();
                return Err(ExportError::Grpc {
                    status: text(status.as_bytes()),
                    message,
                });
            }
        }
        Ok(())
    }
}

/// The start of a response text, printable, for the log.
fn text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX_ERROR_TEXT)]);
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The exporter task: batches of up to `batch_size` spans, sent when full or when the oldest
/// span has waited `batch_delay`; a flush request (shutdown) sends everything queued at once
/// and is answered when done. Ends when every sender is gone (after a last send).
pub(crate) async fn run(
    mut rx: mpsc::Receiver<SpanData>,
    mut flush_rx: mpsc::Receiver<oneshot::Sender<()>>,
    client: Client,
    resource: Resource,
    cfg: Tracing,
    metrics: Arc<Metrics>,
) {
    let mut ex = Exporter {
        client,
        resource,
        batch_size: cfg.batch_size.max(1),
        metrics,
        last_warn: None,
        suppressed: 0,
    };
    let mut batch: Vec<SpanData> = Vec::with_capacity(ex.batch_size);
    let mut flush_open = true;
    loop {
        let mut flush = None;
        tokio::select! {
            s = rx.recv() => match s {
                Some(s) => batch.push(s),
                None => return,
            },
            f = flush_rx.recv(), if flush_open => match f {
                Some(done) => flush = Some(done),
                None => flush_open = false,
            },
        }
        if flush.is_none() && !batch.is_empty() {
            let deadline = Instant::now() + cfg.batch_delay.get();
            while batch.len() < ex.batch_size {
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, rx.recv()) => match r {
                        Ok(Some(s)) => batch.push(s),
                        Ok(None) | Err(_) => break,
                    },
                    f = flush_rx.recv(), if flush_open => match f {
                        Some(done) => {
                            flush = Some(done);
                            break;
                        }
                        None => flush_open = false,
                    },
                }
            }
        }
        ex.send(&mut batch).await;
        if let Some(done) = flush {
            while let Ok(s) = rx.try_recv() {
                batch.push(s);
                if batch.len() >= ex.batch_size {
                    ex.send(&mut batch).await;
                }
            }
            ex.send(&mut batch).await;
            let _ = done.send(());
        }
    }
}

/// The sending half of the task: encodes a batch, exports it, counts and logs the result.
struct Exporter {
    client: Client,
    resource: Resource,
    batch_size: usize,
    metrics: Arc<Metrics>,
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl Exporter {
    async fn send(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let message = encode_request(&self.resource, batch);
        batch.clear();
        match self.client.export(message).await {
            Ok(()) => self.metrics.trace_export_call(true, n),
            Err(e) => {
                self.metrics.trace_export_call(false, n);
                if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        trace.endpoint = %self.client.endpoint.uri,
                        trace.spans_dropped = n,
                        trace.failures_suppressed = self.suppressed,
                        error = %e,
                        "span export failed; spans dropped (next warning in 60s at the earliest)"
                    );
                    self.last_warn = Some(Instant::now());
                    self.suppressed = 0;
                } else {
                    self.suppressed += 1;
                }
            }
        }
    }
}
