//! Response-based limit costs through the proxy: `cost.response_json` (an LLM-style
//! `usage.total_tokens`) and `cost.response_bytes`, charged once the response has ended,
//! against an upstream on an ephemeral loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use harness::{Proxy, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream answering by path: `/tokens/<n>` with `{"usage":{"total_tokens":n}}`,
/// `/bytes/<n>` with n bytes, `/text` with a non-JSON body. Counts requests.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                h.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let (ctype, body) = if let Some(n) = path.strip_prefix("/tokens/") {
                    (
                        "application/json",
                        format!("{{\"id\":\"x\",\"usage\":{{\"prompt_tokens\":1,\"total_tokens\":{n}}}}}")
                            .into_bytes(),
                    )
                } else if let Some(n) = path.strip_prefix("/bytes/") {
                    ("application/octet-stream", vec![b'a'; n.parse().unwrap()])
                } else {
                    ("text/plain", b"not json".to_vec())
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, hits)
}

fn get(up: SocketAddr, path: &str) -> String {
    format!("GET http://{up}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

/// `r=` of the `RateLimit` field.
fn remaining(resp: &harness::RawResponse) -> u64 {
    let rl = resp.header("ratelimit").unwrap();
    let r = rl.split(";r=").nth(1).unwrap();
    r.split(';').next().unwrap().parse().unwrap()
}

/// The charge lands when the body ends; the proxy drops it just after the client read it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn tokens_from_the_response_json_use_up_the_limit() {
    let (up, hits) = upstream().await;
    let proxy = Proxy::start(
        "apis:\n  - name: llm\n    hosts: [\"127.0.0.1\"]\n    limits:\n      - { name: tokens, requests: 100, per: 1h, cost: { response_json: usage.total_tokens } }\n",
    )
    .await;
    // Admission charges the reserve (1): 99 left as the response goes out.
    let resp = raw(proxy.addr, get(up, "/tokens/40").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.body.ends_with(b"\"total_tokens\":40}}"),
        "streamed whole"
    );
    assert_eq!(remaining(&resp), 99);
    settle().await;
    // 40 tokens were charged in total: 60 left, minus this request's reserve.
    let resp = raw(proxy.addr, get(up, "/tokens/50").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(remaining(&resp), 59);
    settle().await;
    // 10 left: this request goes ahead and its 30 tokens drive the counter to the limit.
    let resp = raw(proxy.addr, get(up, "/tokens/30").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(remaining(&resp), 9);
    settle().await;
    let resp = raw(proxy.addr, get(up, "/tokens/1").as_bytes()).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.header("tollgate-error"), Some("rate_limited"));
    assert_eq!(remaining(&resp), 0);
    assert!(resp.header("retry-after").is_some());
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "the refused request was not sent"
    );
}

#[tokio::test]
async fn a_response_without_the_field_charges_the_default() {
    let (up, _) = upstream().await;
    let proxy = Proxy::start(
        "apis:\n  - name: llm\n    hosts: [\"127.0.0.1\"]\n    limits:\n      - { name: tokens, requests: 100, per: 1h, cost: { response_json: usage.total_tokens, default: 25 } }\n",
    )
    .await;
    let resp = raw(proxy.addr, get(up, "/text").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"not json");
    settle().await;
    let resp = raw(proxy.addr, get(up, "/bytes/3").as_bytes()).await;
    assert_eq!(remaining(&resp), 100 - 25 - 1);
}

#[tokio::test]
async fn response_bytes_cap_the_data_pulled() {
    let (up, hits) = upstream().await;
    let proxy = Proxy::start(
        "apis:\n  - name: data\n    hosts: [\"127.0.0.1\"]\n    limits:\n      - { name: bytes, requests: 10000, per: 1d, by: consumer, cost: { response_bytes: true } }\n",
    )
    .await;
    let resp = raw(proxy.addr, get(up, "/bytes/6000").as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), 6000);
    assert_eq!(remaining(&resp), 9999);
    settle().await;
    let resp = raw(proxy.addr, get(up, "/bytes/5000").as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(remaining(&resp), 10000 - 6000 - 1);
    settle().await;
    // 11000 bytes were pulled of 10000: the counter is at the limit.
    let resp = raw(proxy.addr, get(up, "/bytes/1").as_bytes()).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // 5999 + 3999 bytes beyond the reserves fitted; 1000 were beyond the limit.
    let text = proxy.gateway.metrics.encode();
    for (result, n) in [("charged", 9998), ("over_limit", 1000)] {
        let line = format!(
            "tollgate_limit_response_cost_units_total{{api=\"data\",limit=\"bytes\",result=\"{result}\"}} {n}\n"
        );
        assert!(text.contains(&line), "{line} not in {text}");
    }
    // /admin/limits agrees.
    let snap = tollgate_proxy::admin_limits::snapshot(&proxy.gateway).await;
    let key = &snap["apis"][0]["limits"][0]["keys"][0];
    assert_eq!(key["remaining"], 0, "{snap}");
}

#[tokio::test]
async fn global_limits_are_charged_in_redis() {
    let (up, hits) = upstream().await;
    let prefix = format!(
        "tg-cost-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let proxy = Proxy::start(&format!(
        "state: {{ redis: {{ url: \"redis://127.0.0.1:6379\", prefix: \"{prefix}\" }} }}\napis:\n  - name: llm\n    hosts: [\"127.0.0.1\"]\n    limits:\n      - {{ name: tokens, requests: 50, per: 1h, scope: global, cost: {{ response_json: usage.total_tokens }} }}\n"
    ))
    .await;
    let resp = raw(proxy.addr, get(up, "/tokens/45").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(remaining(&resp), 49);
    // The global charge is spawned: wait (bounded) until it shows.
    let mut left = 49;
    for _ in 0..100 {
        settle().await;
        let resp = raw(proxy.addr, get(up, "/tokens/0").as_bytes()).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        left = remaining(&resp);
        if left < 40 {
            break;
        }
    }
    // 45 tokens, then this probe's reserve (and any earlier probes' reserves).
    assert!(left <= 4, "{left}");
    for _ in 0..10 {
        let resp = raw(proxy.addr, get(up, "/tokens/0").as_bytes()).await;
        if resp.status == 429 {
            assert_eq!(resp.header("tollgate-error"), Some("rate_limited"));
            assert!(hits.load(Ordering::SeqCst) <= 50);
            return;
        }
    }
    panic!("the global token limit never refused");
}

#[tokio::test]
async fn a_request_without_a_response_body_costs_only_its_reserve() {
    let (up, _) = upstream().await;
    let proxy = Proxy::start(
        "apis:\n  - name: llm\n    hosts: [\"127.0.0.1\"]\n    limits:\n      - { name: tokens, requests: 100, per: 1h, cost: { response_json: usage.total_tokens, default: 50 } }\n",
    )
    .await;
    let dead = harness::closed_port().await;
    let resp = raw(
        proxy.addr,
        format!(
            "GET http://127.0.0.1:{dead}/tokens/9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 502, "{resp:?}");
    settle().await;
    let resp = raw(proxy.addr, get(up, "/tokens/0").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // The 502 cost its reserve only (not the default 50); this one its reserve.
    assert_eq!(remaining(&resp), 98);
}
