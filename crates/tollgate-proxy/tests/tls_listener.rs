//! The TLS proxy listener (`listen.proxy_tls`) over loopback: a test CA made
//! with rcgen signs the listener's certificate and the client certificates
//! (one with a SPIFFE URI SAN, one with only a subject CN, one revoked by a
//! CRL); a rustls client reaches the plain echo upstream through the
//! listener as a forward proxy and as a route.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use harness::{Proxy, STEP, echo_upstream};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tollgate_policy::Policy;
use tollgate_proxy::Active;

const SPIFFE: &str = "spiffe://tollgate.test/ns/ci/sa/builder";
const REVOKED_SERIAL: u64 = 0x7e57;

/// A client certificate and its key, PEM.
struct ClientId {
    cert: String,
    key: String,
}

struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    spiffe: ClientId,
    cn_only: ClientId,
    revoked: ClientId,
    /// A client signed by a CA the listener does not trust.
    stranger: ClientId,
    crl_pem: String,
}

fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert.pem())
}

fn client(issuer: &Issuer<'static, KeyPair>, cn: &str, uri: Option<&str>, serial: u64) -> ClientId {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(u) = uri {
        params
            .subject_alt_names
            .push(SanType::URI(u.try_into().unwrap()));
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from(serial));
    let cert = params.signed_by(&key, issuer).unwrap();
    ClientId {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A server certificate for 127.0.0.1 with `cn` as its subject (to tell two apart).
fn server_cert(issuer: &Issuer<'static, KeyPair>, cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let (issuer, ca_pem) = ca("Tollgate Listener Test CA");
    let (other, _) = ca("Someone Else's CA");
    let spiffe = client(&issuer, "builder", Some(SPIFFE), 1);
    let cn_only = client(&issuer, "reporter", None, 2);
    let revoked = client(
        &issuer,
        "revoked",
        Some("spiffe://tollgate.test/ns/ci/sa/old"),
        REVOKED_SERIAL,
    );
    let stranger = client(&other, "builder", Some(SPIFFE), 3);
    let now = time::OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(REVOKED_SERIAL),
            revocation_time: now - time::Duration::minutes(5),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    Pki {
        issuer,
        ca_pem,
        spiffe,
        cn_only,
        revoked,
        stranger,
        crl_pem: crl.pem().unwrap(),
    }
}

struct Setup {
    proxy: Proxy,
    tls_addr: SocketAddr,
    up: harness::Upstream,
    tcp_echo: SocketAddr,
    pki: Pki,
    dir: tempfile::TempDir,
    yaml: String,
}

/// Writes the listener's files and starts the proxy with `listen.proxy_tls`
/// (`client_auth` as given) plus a TLS listener task on an ephemeral port.
async fn setup(client_auth: &str) -> Setup {
    let up = echo_upstream().await;
    let tcp_echo = harness::tcp_echo().await;
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (crt, key) = server_cert(&pki.issuer, "listener-1");
    std::fs::write(p("server.crt"), crt).unwrap();
    std::fs::write(p("server.key"), key).unwrap();
    std::fs::write(p("client-ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(p("revoked.crl"), &pki.crl_pem).unwrap();
    let yaml = format!(
        r#"connect: {{ allowed_ports: [{echo_port}] }}
listen:
  proxy_tls:
    addr: "127.0.0.1:0"
    cert: "{crt}"
    key: "${{file:{key}}}"
    client_ca: "{ca}"
    client_auth: {client_auth}
    crls: ["{crl}"]
consumers:
  - name: builder
    identify: {{ client_cert: {{ uri: "{SPIFFE}" }} }}
  - name: reporter
    identify: {{ client_cert: {{ subject_cn: reporter }} }}
  - name: keyed
    identify: {{ api_key: {{ key: keyed-secret }} }}
apis:
  - name: echo
    hosts: ["127.0.0.1"]
    route: /echo
    upstream: "http://{up}"
"#,
        crt = p("server.crt"),
        key = p("server.key"),
        ca = p("client-ca.pem"),
        crl = p("revoked.crl"),
        up = up.addr,
        echo_port = tcp_echo.port(),
    );
    let proxy = Proxy::start(&yaml).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = listener.local_addr().unwrap();
    tokio::spawn(tollgate_proxy::serve_proxy_tls(
        listener,
        proxy.gateway.clone(),
    ));
    Setup {
        proxy,
        tls_addr,
        up,
        tcp_echo,
        pki,
        dir,
        yaml,
    }
}

fn client_config(ca_pem: &str, id: Option<&ClientId>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match id {
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

async fn connect(
    s: &Setup,
    id: Option<&ClientId>,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    connect_to(s.tls_addr, &s.pki.ca_pem, id, alpn).await
}

async fn connect_to(
    addr: SocketAddr,
    ca_pem: &str,
    id: Option<&ClientId>,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, id, alpn));
    let name = ServerName::try_from("127.0.0.1".to_owned()).unwrap();
    tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .unwrap()
}

type Resp = (u16, http::HeaderMap, Bytes);

/// Sends `req` over HTTP/1.1; `Err` when the connection fails (e.g. the
/// server refused the client's certificate after the handshake).
async fn send_h1(
    tls: TlsStream<TcpStream>,
    req: http::Request<Empty<Bytes>>,
) -> Result<Resp, hyper::Error> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .unwrap()?;
    let (p, b) = resp.into_parts();
    Ok((p.status.as_u16(), p.headers, b.collect().await?.to_bytes()))
}

async fn send_h2(tls: TlsStream<TcpStream>, req: http::Request<Empty<Bytes>>) -> Resp {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let (p, b) = resp.into_parts();
    (
        p.status.as_u16(),
        p.headers,
        b.collect().await.unwrap().to_bytes(),
    )
}

fn forward(up: SocketAddr, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://{up}{path}"))
        .header("host", up.to_string())
        .body(Empty::new())
        .unwrap()
}

fn route(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(path)
        .header("host", "tollgate.test")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn spiffe_certificate_identifies_the_consumer_as_forward_proxy_and_route() {
    let s = setup("required").await;
    let tls = connect(&s, Some(&s.pki.spiffe), b"http/1.1").await.unwrap();
    let (status, _, body) = send_h1(tls, forward(s.up.addr, "/fwd?a=1")).await.unwrap();
    assert_eq!(status, 200, "{body:?}");
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["uri"], "/fwd?a=1");

    let tls = connect(&s, Some(&s.pki.spiffe), b"http/1.1").await.unwrap();
    let (status, _, body) = send_h1(tls, route("/echo/r1")).await.unwrap();
    assert_eq!(status, 200, "{body:?}");
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["uri"], "/r1");

    // ALPN h2 on the same listener, a route request.
    let tls = connect(&s, Some(&s.pki.spiffe), b"h2").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let req = http::Request::get(format!("https://127.0.0.1:{}/echo/r2", s.tls_addr.port()))
        .body(Empty::new())
        .unwrap();
    let (status, _, body) = send_h2(tls, req).await;
    assert_eq!(status, 200, "{body:?}");

    // A certificate with only a subject CN names the other consumer.
    let tls = connect(&s, Some(&s.pki.cn_only), b"http/1.1")
        .await
        .unwrap();
    let (status, _, _) = send_h1(tls, route("/echo/r3")).await.unwrap();
    assert_eq!(status, 200);

    let lines = s.proxy.wait_log(4).await;
    assert_eq!(lines[0]["kind"], "forward", "{lines:?}");
    assert_eq!(lines[1]["kind"], "route", "{lines:?}");
    for l in &lines[..3] {
        assert_eq!(l["consumer"], "builder", "{l}");
        assert_eq!(l["api"], "echo", "{l}");
        assert_eq!(l["status"], 200, "{l}");
    }
    assert_eq!(lines[3]["consumer"], "reporter", "{lines:?}");
    assert_eq!(s.up.seen.lock().unwrap().len(), 4);
}

/// Waits (bounded) for `line` in the metrics: the server counts a failed
/// handshake just after the client may already have seen the alert.
async fn wait_metric(s: &Setup, line: &str) {
    for _ in 0..200 {
        if s.proxy.gateway.metrics.encode().contains(line) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{line} missing:\n{}", s.proxy.gateway.metrics.encode());
}

#[tokio::test]
async fn required_mode_refuses_clients_without_a_certificate() {
    let s = setup("required").await;
    // TLS 1.3: the client's handshake completes before the server's verdict;
    // the refusal arrives as an alert on the first read.
    let refused = match connect(&s, None, b"http/1.1").await {
        Err(_) => true,
        Ok(tls) => send_h1(tls, route("/echo/x")).await.is_err(),
    };
    assert!(refused, "a client without a certificate got through");
    // A certificate from an untrusted CA fares no better.
    let refused = match connect(&s, Some(&s.pki.stranger), b"http/1.1").await {
        Err(_) => true,
        Ok(tls) => send_h1(tls, route("/echo/x")).await.is_err(),
    };
    assert!(refused, "a certificate from an unknown CA got through");
    assert!(s.up.seen.lock().unwrap().is_empty());
    assert!(s.proxy.log_lines().is_empty());
    for reason in ["no_certificate", "bad_certificate"] {
        wait_metric(
            &s,
            &format!("tollgate_tls_handshake_failures_total{{reason=\"{reason}\"}} 1"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_revoked_certificate_fails_the_handshake() {
    for mode in ["required", "optional"] {
        let s = setup(mode).await;
        let refused = match connect(&s, Some(&s.pki.revoked), b"http/1.1").await {
            Err(_) => true,
            Ok(tls) => send_h1(tls, route("/echo/x")).await.is_err(),
        };
        assert!(refused, "{mode}: the revoked certificate got through");
        wait_metric(
            &s,
            "tollgate_tls_handshake_failures_total{reason=\"revoked\"} 1",
        )
        .await;
        assert!(s.up.seen.lock().unwrap().is_empty());
        // The same CA's unrevoked certificate still works: the CRL was read, not everything refused.
        let tls = connect(&s, Some(&s.pki.spiffe), b"http/1.1").await.unwrap();
        assert_eq!(send_h1(tls, route("/echo/ok")).await.unwrap().0, 200);
    }
}

#[tokio::test]
async fn optional_mode_lets_clients_without_a_certificate_in() {
    let s = setup("optional").await;
    let tls = connect(&s, None, b"http/1.1").await.unwrap();
    let (status, _, _) = send_h1(tls, route("/echo/anon")).await.unwrap();
    assert_eq!(status, 200);
    // Without a certificate the usual methods still identify.
    let tls = connect(&s, None, b"http/1.1").await.unwrap();
    let req = http::Request::get(format!("http://{}/k", s.up.addr))
        .header("host", s.up.addr.to_string())
        .header("proxy-authorization", "Bearer keyed-secret")
        .body(Empty::new())
        .unwrap();
    let (status, _, _) = send_h1(tls, req).await.unwrap();
    assert_eq!(status, 200);
    let tls = connect(&s, Some(&s.pki.spiffe), b"http/1.1").await.unwrap();
    assert_eq!(send_h1(tls, route("/echo/c")).await.unwrap().0, 200);
    let lines = s.proxy.wait_log(3).await;
    assert_eq!(lines[0]["consumer"], "anonymous", "{lines:?}");
    assert_eq!(lines[1]["consumer"], "keyed", "{lines:?}");
    assert_eq!(lines[2]["consumer"], "builder", "{lines:?}");
}

fn peer_cn(tls: &TlsStream<TcpStream>) -> String {
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    cn.as_str().unwrap().to_owned()
}

fn rebuild(s: &Setup) -> Result<Active, tollgate_proxy::BuildError> {
    let loaded = tollgate_config::load_str(
        &format!("network_guard: {{ allow: [\"127.0.0.1/32\"] }}\n{}", s.yaml),
        "test.yaml",
    )
    .unwrap();
    let policy = Policy::compile(Arc::new(loaded.config), 2).unwrap();
    let current = s.proxy.gateway.active.load_full();
    Active::build(policy, &[s.proxy.addr], Some(&current))
}

#[tokio::test]
async fn reload_swaps_the_server_certificate() {
    let s = setup("optional").await;
    let before = connect(&s, None, b"http/1.1").await.unwrap();
    assert_eq!(peer_cn(&before), "listener-1");

    let (crt, key) = server_cert(&s.pki.issuer, "listener-2");
    std::fs::write(s.dir.path().join("server.crt"), crt).unwrap();
    std::fs::write(s.dir.path().join("server.key"), key).unwrap();
    let active = rebuild(&s).unwrap();
    s.proxy.gateway.active.store(Arc::new(active));

    let after = connect(&s, None, b"http/1.1").await.unwrap();
    assert_eq!(peer_cn(&after), "listener-2");
    // The connection opened before the reload keeps working on its certificate.
    assert_eq!(send_h1(before, route("/echo/old")).await.unwrap().0, 200);
    assert_eq!(send_h1(after, route("/echo/new")).await.unwrap().0, 200);
}

#[tokio::test]
async fn unreadable_or_mismatched_files_are_build_errors_with_their_key() {
    let s = setup("required").await;
    let path = |n: &str| s.dir.path().join(n);
    let write = |n: &str, c: &str| std::fs::write(path(n), c).unwrap();
    let expect = |key: &str| {
        let err = rebuild(&s).err().expect("build should fail");
        assert_eq!(err.key_path(), key, "{err}");
        err.to_string()
    };
    let good_crl = std::fs::read_to_string(path("revoked.crl")).unwrap();
    write("revoked.crl", "garbage");
    let msg = expect("listen.proxy_tls.crls");
    assert!(msg.contains("revoked.crl"), "{msg}");
    write("revoked.crl", &good_crl);

    let good_ca = std::fs::read_to_string(path("client-ca.pem")).unwrap();
    write("client-ca.pem", "no certificates here");
    expect("listen.proxy_tls.client_ca");
    write("client-ca.pem", &good_ca);

    // A key that is not the certificate's.
    let good_key = std::fs::read_to_string(path("server.key")).unwrap();
    write("server.key", &KeyPair::generate().unwrap().serialize_pem());
    let msg = expect("listen.proxy_tls.key");
    assert!(!msg.contains("PRIVATE KEY"), "{msg}");
    write("server.key", &good_key);

    std::fs::remove_file(path("server.crt")).unwrap();
    expect("listen.proxy_tls.cert");
}

#[test]
fn config_rules_are_checked_with_key_paths() {
    let bad = r#"
listen:
  proxy_tls: { addr: "127.0.0.1:0", cert: c.pem, key: k.pem, client_auth: required }
consumers:
  - name: a
    identify: { client_cert: { uri: "spiffe://x/a", dns: a.example } }
"#;
    let errs = tollgate_config::load_str(bad, "t.yaml").err().unwrap();
    let text = format!("{errs}");
    assert!(text.contains("listen.proxy_tls.client_ca"), "{text}");
    assert!(text.contains("consumers[0].identify.client_cert"), "{text}");
}

#[tokio::test]
async fn connect_tunnels_work_over_the_tls_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup("required").await;
    let mut tls = connect(&s, Some(&s.pki.spiffe), b"http/1.1").await.unwrap();
    let target = s.tcp_echo;
    tls.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(STEP, tls.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tls.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(STEP, tls.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping");
    tls.shutdown().await.unwrap();
    drop(tls);
    let lines = s.proxy.wait_log(1).await;
    assert_eq!(lines[0]["kind"], "connect", "{lines:?}");
    assert_eq!(lines[0]["consumer"], "builder", "{lines:?}");
}

/// Reads a response head byte by byte (so nothing after it is consumed).
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(STEP, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn intercepted_tunnels_over_the_tls_listener_keep_the_certificate_identity() {
    use tokio::io::AsyncWriteExt;
    let up = harness::tls_upstream().await;
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (crt, key) = server_cert(&pki.issuer, "listener-1");
    std::fs::write(p("server.crt"), crt).unwrap();
    std::fs::write(p("server.key"), key).unwrap();
    std::fs::write(p("client-ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(p("upstream-ca.pem"), &up.ca_pem).unwrap();
    let (ca_crt, ca_key) = tollgate_proxy::mint::write_ca(dir.path(), false).unwrap();
    let yaml = format!(
        r#"upstream: {{ ca_file: "{up_ca}" }}
connect: {{ allowed_ports: [{port}] }}
tls_intercept: {{ ca_cert: "{ca_crt}", ca_key: "{ca_key}" }}
listen:
  proxy_tls: {{ addr: "127.0.0.1:0", cert: "{crt}", key: "{key}", client_ca: "{ca}", client_auth: required }}
unknown_consumer: {{ action: deny }}
consumers:
  - name: builder
    identify: {{ client_cert: {{ uri: "{SPIFFE}" }} }}
apis:
  - name: sec
    hosts: ["127.0.0.1"]
    tls: intercept
"#,
        up_ca = p("upstream-ca.pem"),
        port = up.addr.port(),
        ca_crt = ca_crt.display(),
        ca_key = ca_key.display(),
        crt = p("server.crt"),
        key = p("server.key"),
        ca = p("client-ca.pem"),
    );
    let proxy = Proxy::start(&yaml).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tollgate_proxy::serve_proxy_tls(
        listener,
        proxy.gateway.clone(),
    ));

    let mut outer = connect_to(addr, &pki.ca_pem, Some(&pki.spiffe), b"http/1.1")
        .await
        .unwrap();
    let target = up.addr;
    outer
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut outer).await.starts_with("HTTP/1.1 200"));
    // TLS inside TLS: the inner handshake is with the certificate Tollgate mints.
    let ca_pem = std::fs::read_to_string(&ca_crt).unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&ca_pem, None, b"http/1.1"));
    let inner = connector
        .connect(ServerName::try_from("127.0.0.1".to_owned()).unwrap(), outer)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(inner))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/in")
        .header("host", target.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let lines = proxy.wait_log(1).await;
    let inner: Vec<_> = lines.iter().filter(|l| l["kind"] == "intercept").collect();
    assert_eq!(inner.len(), 1, "{lines:?}");
    assert_eq!(inner[0]["consumer"], "builder", "{lines:?}");
}
