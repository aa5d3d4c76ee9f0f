//! Graceful shutdown: in-flight requests finish, new requests on open
//! connections get 503, new connections are refused, tunnels are closed when
//! the grace period ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Proxy, echo_upstream, read_head, read_response, tcp_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn refused(addr: std::net::SocketAddr) -> bool {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn in_flight_finishes_new_requests_get_503_new_connections_refused() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("server: { shutdown_grace: 10s }").await;

    // A keep-alive connection that has served one request.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("GET http://{}/first HTTP/1.1\r\nHost: x\r\n\r\n", up.addr);
    idle.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut idle, false).await.status, 200);

    // A slow request in flight when shutdown starts.
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!(
        "GET http://{}/slow/700 HTTP/1.1\r\nHost: x\r\n\r\n",
        up.addr
    );
    slow.write_all(req.as_bytes()).await.unwrap();
    // Shutdown begins once the request is at the upstream.
    up.wait_started(2).await;

    proxy.gateway.shutdown.trigger();

    // A new request on the open keep-alive connection: 503 and close.
    let req = format!("GET http://{}/late HTTP/1.1\r\nHost: x\r\n\r\n", up.addr);
    idle.write_all(req.as_bytes()).await.unwrap();
    let late = read_response(&mut idle, false).await;
    assert_eq!(late.status, 503);
    assert_eq!(late.header("tollgate-error"), Some("shutting_down"));
    assert_eq!(late.header("connection"), Some("close"));

    assert!(
        refused(proxy.addr).await,
        "the listener must stop accepting"
    );

    let done = read_response(&mut slow, false).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.json()["uri"], "/slow/700");
    assert_eq!(done.header("connection"), Some("close"));

    tokio::time::timeout(harness::STEP, proxy.task)
        .await
        .expect("serve_proxy did not return")
        .unwrap();
    assert!(!up.seen.lock().unwrap().iter().any(|r| r["uri"] == "/late"));
}

#[tokio::test]
async fn tunnels_are_closed_when_the_grace_period_ends() {
    let echo = tcp_echo().await;
    let yaml = format!(
        "server: {{ shutdown_grace: 300ms }}\nconnect: {{ allowed_ports: [{}] }}",
        echo.port()
    );
    let proxy = Proxy::start(&yaml).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_head(&mut s).await.0, 200);

    proxy.gateway.shutdown.trigger();
    // The tunnel keeps working during the grace period…
    s.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    tokio::time::timeout(harness::STEP, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"still here");
    // …and is closed when it ends.
    let rest = harness::read_to_close(&mut s).await;
    assert!(rest.is_empty());
    let line = proxy.wait_log(1).await[0].clone();
    assert_eq!(line["bytes_in"], 10);
    tokio::time::timeout(harness::STEP, proxy.task)
        .await
        .expect("serve_proxy did not return")
        .unwrap();
}
