//! Provider back-off shared across gateways through the real Redis (127.0.0.1:6379, unique key
//! prefix), and per credential key, against an upstream on an ephemeral loopback port that
//! answers 429 with `Retry-After` when told to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{Proxy, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The upstream's switches and what it saw.
#[derive(Default)]
struct Up {
    /// Requests received. Paths starting with `/limited` answer 429 `Retry-After: 2`.
    hits: AtomicUsize,
    /// Requests carrying `x-key: <k>` for a key listed here answer 429 `Retry-After: 2`.
    refuse_keys: Mutex<Vec<String>>,
    /// The `x-key` of every request, in order.
    keys: Mutex<Vec<String>>,
}

async fn upstream() -> (SocketAddr, Arc<Up>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = Arc::new(Up::default());
    let u = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let u = u.clone();
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
                u.hits.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-key:"))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default();
                u.keys.lock().unwrap().push(key.clone());
                let refused =
                    path.starts_with("/limited") || u.refuse_keys.lock().unwrap().contains(&key);
                let resp = if refused {
                    "HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                };
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, up)
}

fn get(up: SocketAddr, path: &str) -> String {
    format!("GET http://{up}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

fn unique_prefix() -> String {
    format!(
        "tg-backoff-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test]
async fn a_backoff_learnt_by_one_gateway_stops_the_other() {
    let (up, seen) = upstream().await;
    let yaml = format!(
        "state: {{ redis: {{ url: \"redis://127.0.0.1:6379\", prefix: \"{}\" }} }}\napis:\n  - name: prov\n    hosts: [\"127.0.0.1\"]\n",
        unique_prefix()
    );
    let g1 = Proxy::start(&yaml).await;
    let g2 = Proxy::start(&yaml).await;
    // Gateway 2 has served the API (its state exists and watches Redis).
    let resp = raw(g2.addr, get(up, "/ok").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");

    // The provider tells gateway 1 to back off for 2 s.
    let resp = raw(g1.addr, get(up, "/limited").as_bytes()).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert!(
        resp.header("tollgate-error").is_none(),
        "the provider's own 429"
    );
    let resp = raw(g1.addr, get(up, "/ok").as_bytes()).await;
    assert_eq!(resp.header("tollgate-error"), Some("provider_backoff"));
    let hits = seen.hits.load(Ordering::SeqCst);
    assert_eq!(hits, 2);

    // Gateway 2 learns it from Redis in the background (bounded wait), without being told.
    let mut learnt = false;
    for _ in 0..60 {
        let st = g2.gateway.resilience.status("prov").unwrap();
        if st["provider_backoff_ms"].is_u64() {
            assert_eq!(st["provider_backoff_shared"], true);
            learnt = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(learnt, "gateway 2 never saw the shared back-off");
    let resp = raw(g2.addr, get(up, "/ok").as_bytes()).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.header("tollgate-error"), Some("provider_backoff"));
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        hits,
        "upstream not contacted"
    );

    // /admin/limits shows it.
    let snap = tollgate_proxy::admin_limits::snapshot(&g2.gateway).await;
    let api = &snap["apis"][0];
    assert_eq!(api["name"], "prov");
    assert!(api["provider_backoff_ms"].is_u64(), "{snap}");
}

#[tokio::test]
async fn a_429_parks_only_the_key_that_got_it() {
    let (up, seen) = upstream().await;
    let proxy = Proxy::start(
        "apis:\n  - name: multi\n    hosts: [\"127.0.0.1\"]\n    credentials:\n      keys:\n        - { name: a, header: x-key, value: ka }\n        - { name: b, header: x-key, value: kb }\n",
    )
    .await;
    seen.refuse_keys.lock().unwrap().push("ka".into());
    // Round robin: within two requests key a is used and answered 429.
    let mut got_429 = false;
    for _ in 0..2 {
        let resp = raw(proxy.addr, get(up, "/x").as_bytes()).await;
        if resp.status == 429 {
            assert!(
                resp.header("tollgate-error").is_none(),
                "the provider's 429"
            );
            got_429 = true;
        }
    }
    assert!(got_429);
    let st = proxy.gateway.resilience.status("multi").unwrap();
    assert!(st["key_backoff_ms"]["a"].is_u64(), "{st}");
    assert!(st["key_backoff_ms"]["b"].is_null(), "{st}");
    assert!(st["provider_backoff_ms"].is_null(), "not API-wide: {st}");
    // Now only key b is used, and the API keeps answering.
    let before = seen.keys.lock().unwrap().len();
    for _ in 0..4 {
        let resp = raw(proxy.addr, get(up, "/x").as_bytes()).await;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    let used: Vec<String> = seen.keys.lock().unwrap()[before..].to_vec();
    assert_eq!(used, vec!["kb"; 4]);

    // After the reset (2 s) both keys are used again.
    seen.refuse_keys.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let before = seen.keys.lock().unwrap().len();
    for _ in 0..4 {
        let resp = raw(proxy.addr, get(up, "/x").as_bytes()).await;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    let used: Vec<String> = seen.keys.lock().unwrap()[before..].to_vec();
    assert!(
        used.contains(&"ka".to_owned()) && used.contains(&"kb".to_owned()),
        "{used:?}"
    );
}

#[tokio::test]
async fn when_every_key_is_parked_the_api_backs_off() {
    let (up, seen) = upstream().await;
    let proxy = Proxy::start(
        "apis:\n  - name: multi\n    hosts: [\"127.0.0.1\"]\n    credentials:\n      keys:\n        - { name: a, header: x-key, value: ka }\n        - { name: b, header: x-key, value: kb }\n",
    )
    .await;
    seen.refuse_keys
        .lock()
        .unwrap()
        .extend(["ka".to_owned(), "kb".to_owned()]);
    for _ in 0..2 {
        let resp = raw(proxy.addr, get(up, "/x").as_bytes()).await;
        assert_eq!(resp.status, 429, "{resp:?}");
        assert!(resp.header("tollgate-error").is_none());
    }
    let hits = seen.hits.load(Ordering::SeqCst);
    let resp = raw(proxy.addr, get(up, "/x").as_bytes()).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.header("tollgate-error"), Some("provider_backoff"));
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        hits,
        "upstream not contacted"
    );
}

#[tokio::test]
async fn a_key_parked_by_one_gateway_is_skipped_by_the_other() {
    let (up, seen) = upstream().await;
    let yaml = format!(
        "state: {{ redis: {{ url: \"redis://127.0.0.1:6379\", prefix: \"{}\" }} }}\napis:\n  - name: multi\n    hosts: [\"127.0.0.1\"]\n    credentials:\n      keys:\n        - {{ name: a, header: x-key, value: ka }}\n        - {{ name: b, header: x-key, value: kb }}\n",
        unique_prefix()
    );
    let g1 = Proxy::start(&yaml).await;
    let g2 = Proxy::start(&yaml).await;
    // Gateway 2 has served the API (its state exists and watches Redis).
    let resp = raw(g2.addr, get(up, "/ok").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");

    // The provider refuses key a (429, Retry-After: 2); gateway 1 meets it within two requests.
    seen.refuse_keys.lock().unwrap().push("ka".into());
    let mut got_429 = false;
    for _ in 0..2 {
        let resp = raw(g1.addr, get(up, "/x").as_bytes()).await;
        got_429 |= resp.status == 429;
    }
    assert!(got_429);
    let st = g1.gateway.resilience.status("multi").unwrap();
    assert!(st["key_backoff_ms"]["a"].is_u64(), "{st}");

    // Gateway 2 learns key a's back-off from Redis (bounded wait), not the API's.
    let mut learnt = false;
    for _ in 0..60 {
        let st = g2.gateway.resilience.status("multi").unwrap();
        if st["key_backoff_ms"]["a"].is_u64() {
            assert!(st["key_backoff_ms"]["b"].is_null(), "{st}");
            assert!(st["provider_backoff_ms"].is_null(), "not API-wide: {st}");
            learnt = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(learnt, "gateway 2 never saw key a's shared back-off");
    // ... and leaves key a out of its rotation: every request goes out with key b and passes
    // (key a would still get the provider's 429).
    let before = seen.keys.lock().unwrap().len();
    for _ in 0..4 {
        let resp = raw(g2.addr, get(up, "/x").as_bytes()).await;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    let used: Vec<String> = seen.keys.lock().unwrap()[before..].to_vec();
    assert_eq!(used, vec!["kb"; 4]);
}
