//! CONNECT tunnels and TLS upstreams over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::io::Write;

use harness::{Proxy, raw, read_head, tcp_echo, tls_upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn connect_tunnel_copies_and_counts_bytes() {
    let echo = tcp_echo().await;
    let proxy = Proxy::start(&format!("connect: {{ allowed_ports: [{}] }}", echo.port())).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, rest) = read_head(&mut s).await;
    assert_eq!(status, 200);
    assert!(rest.is_empty());
    s.write_all(b"ping!").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(harness::STEP, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping!");
    s.shutdown().await.unwrap();
    let _ = harness::read_to_close(&mut s).await;

    let line = &proxy.wait_log(1).await[0];
    assert_eq!(line["kind"], "connect");
    assert_eq!(line["method"], "CONNECT");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 5);
    assert_eq!(line["bytes_out"], 5);
    assert_eq!(line["upstream_addr"], echo.to_string());
    assert!(proxy.gateway.metrics.encode().contains("tunnel"));
}

#[tokio::test]
async fn connect_to_a_port_not_allowed_is_403() {
    let echo = tcp_echo().await;
    let proxy = Proxy::start("").await;
    let req = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.header("tollgate-error"), Some("port_not_allowed"));
}

#[tokio::test]
async fn connect_idle_tunnel_is_closed() {
    let echo = tcp_echo().await;
    let yaml = format!(
        "connect: {{ allowed_ports: [{}], idle_timeout: 200ms }}",
        echo.port()
    );
    let proxy = Proxy::start(&yaml).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_head(&mut s).await.0, 200);
    // Nothing is sent: the gateway closes the tunnel on its own.
    let rest = harness::read_to_close(&mut s).await;
    assert!(rest.is_empty());
    assert_eq!(proxy.wait_log(1).await[0]["status"], 200);
}

fn ca_file(pem: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(pem.as_bytes()).unwrap();
    f
}

#[tokio::test]
async fn tls_upstream_with_extra_ca_uses_h2() {
    let up = tls_upstream().await;
    let ca = ca_file(&up.ca_pem);
    let proxy = Proxy::start(&format!(
        "upstream: {{ ca_file: \"{}\" }}",
        ca.path().display()
    ))
    .await;
    let req = format!(
        "GET https://{}/secure HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        up.addr
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-alpn"), Some("h2"));
    assert_eq!(resp.json()["uri"], format!("https://{}/secure", up.addr));

    let yaml = format!(
        "upstream: {{ ca_file: \"{}\", http2: false }}\napis:\n  - name: sec\n    route: /sec\n    upstream: https://{}\n",
        ca.path().display(),
        up.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let resp = raw(
        proxy.addr,
        b"GET /sec/a HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-alpn"), Some("http/1.1"));
    assert_eq!(resp.json()["uri"], "/a");
}

#[tokio::test]
async fn tls_upstream_with_unknown_ca_is_502() {
    let up = tls_upstream().await;
    let proxy = Proxy::start("").await;
    let req = format!(
        "GET https://{}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        up.addr
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("tollgate-error"), Some("upstream_tls_failed"));
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn curl_https_through_connect() {
    let up = tls_upstream().await;
    let ca = ca_file(&up.ca_pem);
    let proxy = Proxy::start(&format!(
        "connect: {{ allowed_ports: [{}] }}",
        up.addr.port()
    ))
    .await;
    let out = tokio::time::timeout(
        harness::STEP,
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--noproxy",
                "",
                "-x",
                &format!("http://{}", proxy.addr),
            ])
            .arg("--cacert")
            .arg(ca.path())
            .arg(format!("https://localhost:{}/via-curl", up.addr.port()))
            .output(),
    )
    .await
    .unwrap();
    let Ok(out) = out else {
        eprintln!("curl not available; skipping");
        return;
    };
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(body["uri"].as_str().unwrap().ends_with("/via-curl"));
}
