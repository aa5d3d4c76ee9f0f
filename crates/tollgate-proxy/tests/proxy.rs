//! The proxy data path end to end over loopback: forward proxy, routes,
//! proxy semantics (hop-by-hop headers, Host, framing, streaming), request
//! IDs, and upstream failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use harness::{Proxy, closed_port, echo_upstream, raw, read_response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn forward_get_rewrites_host_and_strips_hop_headers() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("").await;
    let req = format!(
        "GET http://{}/hello?token=s3cret&x=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: keep-alive, x-client-hop\r\nx-client-hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: websocket\r\nx-keep: yes\r\nx-request-id: req-123\r\n\r\n",
        up.addr
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = resp.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["uri"], "/hello?token=s3cret&x=1");
    let h = &seen["headers"];
    assert_eq!(
        h["host"][0],
        up.addr.to_string(),
        "Host is rewritten to the target authority"
    );
    for hop in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(h.get(hop).is_none(), "{hop} was forwarded: {h}");
    }
    assert_eq!(h["x-keep"][0], "yes");
    assert_eq!(h["x-request-id"][0], "req-123");
    assert!(h["traceparent"][0].as_str().unwrap().starts_with("00-"));
    assert_eq!(resp.header("x-request-id"), Some("req-123"));

    let line = &proxy.wait_log(1).await[0];
    assert_eq!(line["kind"], "forward");
    assert_eq!(line["status"], 200);
    assert_eq!(line["request_id"], "req-123");
    assert_eq!(line["upstream_addr"], up.addr.to_string());
    let path = line["path"].as_str().unwrap();
    assert!(
        !path.contains("s3cret") && path.contains("x=1"),
        "query not redacted: {path}"
    );
    assert!(line["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn hop_headers_from_upstream_are_stripped() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("").await;
    let req = format!(
        "GET http://{}/hop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        up.addr
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-up-keep"), Some("yes"));
    for hop in ["x-up-hop", "keep-alive", "proxy-authenticate"] {
        assert!(resp.header(hop).is_none(), "{hop} reached the client");
    }
    assert!(resp.header("x-request-id").is_some());
}

#[tokio::test]
async fn post_body_streams_with_content_length() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("").await;
    let body = "a".repeat(100_000);
    let req = format!(
        "POST http://{}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        up.addr,
        body.len(),
        body
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    let seen = resp.json();
    assert_eq!(seen["body"].as_str().unwrap().len(), 100_000);
    assert_eq!(seen["headers"]["content-length"][0], "100000");
    let line = &proxy.wait_log(1).await[0];
    assert_eq!(line["bytes_in"], 100_000);
}

#[tokio::test]
async fn chunked_request_body_arrives_intact() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST http://{}/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        up.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Sent in pieces, as a streaming client would.
    for piece in [
        &b"5\r\nhello\r\n"[..],
        b"7;ext=1\r\n, world\r\n",
        b"0\r\n\r\n",
    ] {
        s.write_all(piece).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let resp = read_response(&mut s, false).await;
    assert_eq!(resp.status, 200);
    let seen = resp.json();
    assert_eq!(seen["body"], "hello, world");
    assert!(seen["headers"].get("content-length").is_none());
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("").await;
    for head in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
    ] {
        let req = format!(
            "POST http://{}/x HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n0\r\n\r\n",
            up.addr
        );
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 400, "{head}");
        assert_eq!(resp.header("tollgate-error"), Some("ambiguous_framing"));
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(resp.json()["code"], "ambiguous_framing");
    }
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "nothing may reach the upstream"
    );
}

#[tokio::test]
async fn differing_content_lengths_and_bad_te_are_refused_by_hyper() {
    // hyper's parser refuses these before Tollgate sees them: a bare 400.
    let up = echo_upstream().await;
    let proxy = Proxy::start("").await;
    for head in [
        "Content-Length: 5\r\nContent-Length: 6",
        "Transfer-Encoding: gzip",
    ] {
        let req = format!(
            "POST http://{}/x HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\nhello",
            up.addr
        );
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 400, "{head}");
    }
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bad_chunking_aborts_and_answers_400() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("").await;
    let req = format!(
        "POST http://{}/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nbad\r\n0\r\n\r\n",
        up.addr
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.header("tollgate-error"), Some("bad_request"));
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "the upstream must not get a complete request"
    );
}

#[tokio::test]
async fn header_limits() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("server: { max_header_bytes: 8KiB, max_headers: 20 }").await;
    let big = format!(
        "GET http://{}/x HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        up.addr,
        "a".repeat(9000)
    );
    assert_eq!(raw(proxy.addr, big.as_bytes()).await.status, 431);
    let mut many = format!("GET http://{}/x HTTP/1.1\r\nHost: x\r\n", up.addr);
    for i in 0..30 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(proxy.addr, many.as_bytes()).await.status, 431);
    let ok = format!(
        "GET http://{}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        up.addr
    );
    assert_eq!(raw(proxy.addr, ok.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn slow_headers_close_the_connection() {
    // hyper closes the connection when the head is not complete in time (no 408).
    let proxy = Proxy::start("server: { header_read_timeout: 200ms }").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let rest = harness::read_to_close(&mut s).await;
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
}

#[tokio::test]
async fn route_to_upstream_with_base_path() {
    let up = echo_upstream().await;
    let yaml = format!(
        "apis:\n  - name: echo\n    route: /echo\n    upstream: http://{}/base\n",
        up.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let resp = raw(
        proxy.addr,
        b"GET /echo/items/1?q=2 HTTP/1.1\r\nHost: gateway.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = resp.json();
    assert_eq!(seen["uri"], "/base/items/1?q=2");
    assert_eq!(seen["headers"]["host"][0], up.addr.to_string());
    let line = &proxy.wait_log(1).await[0];
    assert_eq!(line["kind"], "route");
    assert_eq!(line["api"], "echo");

    let resp = raw(
        proxy.addr,
        b"GET /nothing HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.header("tollgate-error"), Some("route_not_found"));
}

#[tokio::test]
async fn loopback_is_blocked_without_an_allow_entry() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("network_guard: {}").await;
    let req = format!(
        "GET http://{}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        up.addr
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.header("tollgate-error"), Some("destination_blocked"));
    assert!(up.seen.lock().unwrap().is_empty());
    let line = &proxy.wait_log(1).await[0];
    assert_eq!(line["reason"], "destination_blocked");
    assert!(proxy.gateway.metrics.encode().contains("loopback"));
}

#[tokio::test]
async fn connection_refused_is_502() {
    let port = closed_port().await;
    let proxy = Proxy::start("").await;
    let req =
        format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("tollgate-error"),
        Some("upstream_connect_failed")
    );
    let body = resp.json();
    assert_eq!(
        body["type"],
        "https://tollgate.dev/errors/upstream_connect_failed"
    );
    assert_eq!(body["status"], 502);
    assert!(body["request_id"].as_str().unwrap().len() == 32);
}

#[tokio::test]
async fn response_header_timeout_is_504() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("upstream: { response_header_timeout: 200ms }").await;
    let req = format!(
        "GET http://{}/slow/3000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        up.addr
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.header("tollgate-error"), Some("upstream_timeout"));
}

#[tokio::test]
async fn keep_alive_reuses_client_connection() {
    let up = echo_upstream().await;
    let proxy = Proxy::start("").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..3 {
        let req = format!("GET http://{}/n{i} HTTP/1.1\r\nHost: x\r\n\r\n", up.addr);
        s.write_all(req.as_bytes()).await.unwrap();
        let resp = read_response(&mut s, false).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["uri"], format!("/n{i}"));
    }
}
