//! Intercepted CONNECT tunnels (`tls: intercept`) over loopback: a local TLS
//! upstream signed by a test CA, a Tollgate CA made by the same code as
//! `tollgate ca init`, and a rustls client that trusts only that CA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use harness::{Proxy, STEP, read_head, tls_upstream};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The credential Tollgate injects upstream; the client never holds it.
const SECRET: &str = "upstream-secret-7d1f";

struct Setup {
    proxy: Proxy,
    up: harness::TlsUpstream,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

async fn setup(extra_api: &str) -> Setup {
    let up = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_crt, ca_key) = tollgate_proxy::mint::write_ca(dir.path(), false).unwrap();
    let up_ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&up_ca, &up.ca_pem).unwrap();
    let yaml = format!(
        r#"upstream: {{ ca_file: "{up_ca}" }}
connect: {{ allowed_ports: [{port}] }}
tls_intercept: {{ ca_cert: "{crt}", ca_key: "{key}" }}
consumers:
  - name: ci
    identify: {{ api_key: {{ key: ci-key }} }}
apis:
  - name: sec
    hosts: ["127.0.0.1"]
    tls: intercept
    credentials: {{ header: x-api-key, value: "{SECRET}" }}
    allow:
      - {{ methods: [GET], paths: ["/ok/**"] }}
{extra_api}"#,
        up_ca = up_ca.display(),
        port = up.addr.port(),
        crt = ca_crt.display(),
        key = ca_key.display(),
    );
    let proxy = Proxy::start(&yaml).await;
    let ca_pem = std::fs::read_to_string(&ca_crt).unwrap();
    Setup {
        proxy,
        up,
        ca_pem,
        _dir: dir,
    }
}

/// CONNECTs to `target` (with `Proxy-Authorization: Bearer ci-key`) and
/// returns the raw tunnel after the 200.
async fn connect(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Bearer ci-key\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, rest) = read_head(&mut s).await;
    assert_eq!(status, 200);
    assert!(rest.is_empty());
    s
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

async fn tls(
    s: TcpStream,
    ca_pem: &str,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, alpn));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(STEP, connector.connect(name, s))
        .await
        .unwrap()
}

type Resp = (u16, http::HeaderMap, Bytes);

async fn send_h1(tls: TlsStream<TcpStream>, reqs: Vec<http::Request<Empty<Bytes>>>) -> Vec<Resp> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for r in reqs {
        let resp = tokio::time::timeout(STEP, sender.send_request(r))
            .await
            .unwrap()
            .unwrap();
        let (p, b) = resp.into_parts();
        out.push((
            p.status.as_u16(),
            p.headers,
            b.collect().await.unwrap().to_bytes(),
        ));
    }
    out
}

fn get(authority: &str, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(path)
        .header("host", authority)
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn requests_inside_the_tunnel_run_the_pipeline() {
    let s = setup("").await;
    let target = s.up.addr;
    let tunnel = connect(s.proxy.addr, target).await;
    // An IP address: the client sends no SNI, the CONNECT host is used.
    let tls = tls(tunnel, &s.ca_pem, "127.0.0.1", &[b"http/1.1"])
        .await
        .unwrap();
    let auth = target.to_string();
    let resps = send_h1(
        tls,
        vec![
            get(&auth, "/ok/1?q=2"),
            get(&auth, "/denied"),
            get("other.example", "/ok/1"),
        ],
    )
    .await;

    let (status, _, body) = &resps[0];
    assert_eq!(*status, 200, "{body:?}");
    let echoed: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(echoed["uri"], format!("https://{target}/ok/1?q=2"));
    // The CONNECT's identity reached the pipeline; the header did not go upstream.
    assert!(echoed["headers"].get("proxy-authorization").is_none());
    // The injected credential reached the upstream, not the client's response headers.
    let seen = s.up.seen.lock().unwrap()[0].clone();
    assert_eq!(seen["headers"]["x-api-key"], serde_json::json!([SECRET]));
    assert!(
        resps[0]
            .1
            .iter()
            .all(|(_, v)| v.as_bytes() != SECRET.as_bytes())
    );

    let (status, headers, body) = &resps[1];
    assert_eq!(*status, 403);
    assert_eq!(headers["tollgate-error"], "endpoint_not_allowed");
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(problem["code"], "endpoint_not_allowed");

    // Host cannot pivot to another destination.
    let (status, headers, _) = &resps[2];
    assert_eq!(*status, 400);
    assert_eq!(headers["tollgate-error"], "bad_request");

    // Only the allowed request reached the upstream.
    assert_eq!(s.up.seen.lock().unwrap().len(), 1);

    let lines = s.proxy.wait_log(3).await;
    let inner: Vec<_> = lines.iter().filter(|l| l["kind"] == "intercept").collect();
    assert_eq!(inner.len(), 3, "{lines:?}");
    assert_eq!(inner[0]["status"], 200);
    assert_eq!(inner[0]["consumer"], "ci");
    assert_eq!(inner[0]["api"], "sec");
    assert_eq!(inner[0]["scheme"], "https");
    assert_eq!(inner[0]["path"], "/ok/1?q=2");
    assert_eq!(inner[1]["status"], 403);
    assert_eq!(inner[1]["reason"], "endpoint_not_allowed");
    assert_eq!(inner[2]["status"], 400);
}

#[tokio::test]
async fn h2_by_alpn_and_the_leaf_is_minted_once() {
    let s = setup("").await;
    let target = s.up.addr;
    for _ in 0..2 {
        let tunnel = connect(s.proxy.addr, target).await;
        let tls = tls(tunnel, &s.ca_pem, "127.0.0.1", &[b"h2", b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://{target}/ok/h2"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(STEP, sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let active = s.proxy.gateway.active.load();
    assert_eq!(active.intercept.as_ref().unwrap().minted(), 1);
    assert_eq!(s.up.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn sni_that_is_not_the_connect_host_is_refused() {
    let s = setup("").await;
    let tunnel = connect(s.proxy.addr, s.up.addr).await;
    let Err(err) = tls(tunnel, &s.ca_pem, "evil.example", &[b"http/1.1"]).await else {
        panic!("the handshake must fail");
    };
    assert!(
        err.to_string().to_lowercase().contains("alert"),
        "expected a TLS alert, got {err}"
    );
    let lines = s.proxy.wait_log(1).await;
    assert_eq!(lines[0]["kind"], "connect");
    assert_eq!(lines[0]["reason"], "tls_sni_mismatch");
    assert!(s.up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn plain_http_in_an_intercepted_tunnel_is_closed() {
    let s = setup("").await;
    let mut tunnel = connect(s.proxy.addr, s.up.addr).await;
    tunnel
        .write_all(b"GET /ok/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(STEP, tunnel.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "nothing is answered: {:?}",
        String::from_utf8_lossy(&buf)
    );
    let lines = s.proxy.wait_log(1).await;
    assert_eq!(lines[0]["reason"], "not_tls");
    assert!(s.up.seen.lock().unwrap().is_empty());
}

#[test]
fn intercept_without_a_ca_is_a_validation_error() {
    let yaml = "apis:\n  - name: sec\n    hosts: [api.example.com]\n    tls: intercept\n";
    let errors = tollgate_config::load_str(yaml, "t.yaml").err().unwrap();
    let text = format!("{errors:?}");
    assert!(text.contains("apis[0].tls"), "{text}");
}

#[test]
fn an_unreadable_ca_key_is_a_build_error() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, _) = tollgate_proxy::mint::write_ca(dir.path(), false).unwrap();
    let yaml = format!(
        "tls_intercept: {{ ca_cert: \"{}\", ca_key: \"{}/missing.key\" }}\n",
        crt.display(),
        dir.path().display()
    );
    let loaded = tollgate_config::load_str(&yaml, "t.yaml").unwrap();
    let policy = tollgate_policy::Policy::compile(Arc::new(loaded.config), 1).unwrap();
    let err = tollgate_proxy::Active::build(policy, &[], None)
        .err()
        .unwrap();
    assert_eq!(err.key_path(), "tls_intercept.ca_key", "{err}");
}
