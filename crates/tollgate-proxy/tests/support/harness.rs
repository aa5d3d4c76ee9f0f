//! Shared helpers for the proxy's integration tests: a proxy started
//! in-process on an ephemeral loopback port, a small echo upstream, and a raw
//! HTTP/1 client that shows exactly what went over the wire.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_policy::Policy;
use tollgate_proxy::Gateway;
use tollgate_telemetry::{AccessLog, Metrics};

/// Upper bound for any single network step in a test.
pub const STEP: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub task: tokio::task::JoinHandle<()>,
    log: LogBuf,
}

impl Proxy {
    /// Starts a proxy with `yaml` as its configuration. Loopback is allowed
    /// by the guard unless the YAML sets `network_guard` itself.
    pub async fn start(yaml: &str) -> Proxy {
        let yaml = if yaml.contains("network_guard") {
            yaml.to_owned()
        } else {
            format!("network_guard: {{ allow: [\"127.0.0.1/32\"] }}\n{yaml}")
        };
        let loaded = tollgate_config::load_str(&yaml, "test.yaml")
            .unwrap_or_else(|e| panic!("config: {e:?}"));
        let policy =
            Policy::compile(Arc::new(loaded.config), 1).unwrap_or_else(|e| panic!("policy: {e:?}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let log = LogBuf::default();
        let access_log = AccessLog::with_writer(Box::new(log.clone()), &metrics, 1024).unwrap();
        let gateway = Gateway::new(policy, metrics, access_log, &[addr]).unwrap();
        let task = tokio::spawn(tollgate_proxy::serve_proxy(listener, gateway.clone()));
        Proxy {
            addr,
            gateway,
            task,
            log,
        }
    }

    /// The access-log lines written so far, parsed.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.gateway.access_log.flush();
        let buf = self.log.0.lock().unwrap().clone();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (bounded) until `n` access-log lines exist; they are written when bodies finish.
    pub async fn wait_log(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let lines = self.log_lines();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("expected {n} access-log lines, got {:?}", self.log_lines());
    }
}

/// A parsed HTTP/1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HashMap<String, Vec<String>>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response from `buf` (which holds at least all of it). Returns
/// the response and the bytes it used.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    closed: bool,
) -> Option<(RawResponse, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for l in lines {
        let (k, v) = l.split_once(':')?;
        headers
            .entry(k.trim().to_ascii_lowercase())
            .or_default()
            .push(v.trim().to_owned());
    }
    let mut pos = end + 4;
    let mut body = Vec::new();
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|t| t.contains("chunked")))
    {
        loop {
            let le = find(&buf[pos..], b"\r\n")?;
            let size_str = std::str::from_utf8(&buf[pos..pos + le]).unwrap();
            let size =
                usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
            pos += le + 2;
            if size == 0 {
                let te = find(&buf[pos..], b"\r\n")?;
                pos += te + 2;
                break;
            }
            if buf.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    } else if let Some(cl) = headers.get("content-length") {
        let n: usize = cl[0].parse().unwrap();
        if buf.len() < pos + n {
            return None;
        }
        body.extend_from_slice(&buf[pos..pos + n]);
        pos += n;
    } else if closed {
        // Delimited by the connection closing.
        body.extend_from_slice(&buf[pos..]);
        pos = buf.len();
    } else {
        return None;
    }
    Some((
        RawResponse {
            status,
            headers,
            body,
        },
        pos,
    ))
}

/// Reads one full response from `stream` (bounded in time).
pub async fn read_response(stream: &mut TcpStream, head_request: bool) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((r, _)) = parse_response(&buf, head_request, false) {
            return r;
        }
        let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
            .await
            .expect("read timed out")
            .unwrap_or(0);
        if n == 0 {
            return parse_response(&buf, head_request, true)
                .unwrap_or_else(|| {
                    panic!(
                        "connection closed mid-response: {:?}",
                        String::from_utf8_lossy(&buf)
                    )
                })
                .0;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends raw bytes on a new connection and reads one response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s, request.starts_with(b"HEAD ")).await
}

/// Reads until the peer closes; returns everything read.
pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .expect("peer did not close")
        .ok();
    out
}

/// What the echo upstream saw.
pub type Seen = Arc<Mutex<Vec<serde_json::Value>>>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Seen,
    /// Requests whose head reached the upstream (counted before any `/slow` sleep).
    pub started: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    /// Waits (bounded) until `n` requests have reached the upstream.
    pub async fn wait_started(&self, n: usize) {
        for _ in 0..400 {
            if self.started.load(std::sync::atomic::Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("upstream did not get {n} requests");
    }
}

/// An HTTP/1.1 upstream that answers with JSON describing the request it got:
/// `{method, uri, headers: {name: [values]}, body}` (body as a string).
/// Paths: `/slow/<ms>` sleeps first; `/hop` answers with hop-by-hop headers.
pub async fn echo_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let started: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let started2 = started.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            let started = started2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move { Ok::<_, Infallible>(echo(req, seen).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        started,
    }
}

pub fn describe(parts: &http::request::Parts, body: &[u8]) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let e = headers
            .entry(k.as_str())
            .or_insert_with(|| serde_json::json!([]));
        e.as_array_mut()
            .unwrap()
            .push(serde_json::json!(String::from_utf8_lossy(v.as_bytes())));
    }
    serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    })
}

async fn echo(req: Request<Incoming>, seen: Seen) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let d = describe(&parts, &body);
    seen.lock().unwrap().push(d.clone());
    let mut resp = Response::new(Full::new(Bytes::from(d.to_string())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if path == "/hop" {
        let h = resp.headers_mut();
        h.insert("connection", "x-up-hop".parse().unwrap());
        h.insert("x-up-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-up-keep", "yes".parse().unwrap());
    }
    resp
}

/// A TCP server that echoes bytes back.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A port on which nothing listens (bound, then released).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = l.local_addr().unwrap().port();
    drop(l);
    p
}

/// Reads a response head only (for CONNECT); returns the status and any bytes after the head.
pub async fn read_head(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, buf[end + 4..].to_vec());
        }
        let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
            .await
            .expect("read timed out")
            .unwrap();
        assert!(
            n > 0,
            "closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A test CA and a TLS upstream (HTTP/1.1 and h2 via ALPN) whose certificate
/// it signed for 127.0.0.1 and localhost.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub seen: Seen,
}

pub async fn tls_upstream() -> TlsUpstream {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subject names: OpenSSL takes issuer == subject for self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tollgate Test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let alpn = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).to_string());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    let alpn = alpn.clone();
                    async move {
                        let mut r = echo(req, seen.clone()).await;
                        if let Some(a) = alpn {
                            r.headers_mut().insert("x-alpn", a.parse().unwrap());
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsUpstream {
        addr,
        ca_pem: ca_cert.pem(),
        seen,
    }
}
