//! Retries, circuit breaker and provider back-off through the proxy, against a
//! scripted upstream on an ephemeral loopback port that answers each request
//! with the next step of its script (a status with headers, or a reset).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Proxy, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_policy::Policy;
use tollgate_proxy::Active;

/// One scripted answer.
#[derive(Clone)]
enum Step {
    Status(u16, Vec<(&'static str, String)>),
    /// Close the connection without answering.
    Reset,
    /// Answer 200 after this long.
    Slow(Duration),
    /// Answer this status with a body of this many bytes.
    Big(u16, usize),
}

fn status(code: u16) -> Step {
    Step::Status(code, Vec::new())
}

/// What the upstream received.
#[derive(Clone, Debug)]
struct Got {
    method: String,
    headers: String,
    body: Vec<u8>,
    at: Instant,
}

#[derive(Clone, Default)]
struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    got: Arc<Mutex<Vec<Got>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Script {
    fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.steps.lock().unwrap().extend(steps);
    }
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (Content-Length or chunked body) from `buf` + `s`.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Got> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let lower = head.to_ascii_lowercase();
    buf.drain(..head_end + 4);
    let method = head.split(' ').next().unwrap().to_owned();
    let mut body = Vec::new();
    if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else if let Some(cl) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
    {
        let n: usize = cl.trim().parse().ok()?;
        while buf.len() < n {
            let r = s.read(&mut chunk).await.ok()?;
            if r == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..r]);
        }
        body = buf.drain(..n).collect();
    }
    Some(Got {
        method,
        headers: lower,
        body,
        at: Instant::now(),
    })
}

async fn scripted_upstream() -> (SocketAddr, Script) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Script::default();
    let sc = script.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let sc = sc.clone();
            sc.connections
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(got) = read_request(&mut s, &mut buf).await {
                    sc.got.lock().unwrap().push(got);
                    let step = sc.steps.lock().unwrap().pop_front();
                    match step.unwrap_or_else(|| status(200)) {
                        Step::Reset => return,
                        Step::Big(code, n) => {
                            let mut out =
                                format!("HTTP/1.1 {code} X\r\ncontent-length: {n}\r\n\r\n")
                                    .into_bytes();
                            out.resize(out.len() + n, b'z');
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        Step::Slow(d) => {
                            tokio::time::sleep(d).await;
                            let out = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow";
                            if s.write_all(out.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Step::Status(code, headers) => {
                            let body = format!("answer {code}");
                            let mut out =
                                format!("HTTP/1.1 {code} X\r\ncontent-length: {}\r\n", body.len());
                            for (k, v) in headers {
                                out.push_str(&format!("{k}: {v}\r\n"));
                            }
                            out.push_str("\r\n");
                            out.push_str(&body);
                            if s.write_all(out.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, script)
}

fn config(api_extra: &str) -> String {
    format!("apis:\n  - name: flaky\n    hosts: [\"127.0.0.1\"]\n{api_extra}",)
}

const FAST_RETRY: &str =
    "    retry: { attempts: 3, backoff: 5ms..20ms, per_try_timeout: 2s, deadline: 10s }\n";

fn get(up: SocketAddr, path: &str) -> String {
    format!("GET http://{up}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

fn metric(proxy: &Proxy, prefix: &str) -> Option<u64> {
    proxy
        .gateway
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().parse().unwrap()))
}

#[tokio::test]
async fn retries_503_until_success_and_logs_attempts() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(FAST_RETRY)).await;
    script.push([status(503), status(503), status(200)]);
    let resp = raw(proxy.addr, get(up, "/a").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"answer 200");
    assert_eq!(script.count(), 3);
    let lines = proxy.wait_log(1).await;
    assert_eq!(lines[0]["attempts"], 3);
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(
        metric(
            &proxy,
            "tollgate_upstream_retries_total{api=\"flaky\",reason=\"503\"} "
        ),
        Some(2)
    );

    // Attempts run out: the last upstream answer goes to the client as it was.
    script.push([status(503), status(502), status(504)]);
    let resp = raw(proxy.addr, get(up, "/b").as_bytes()).await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.body, b"answer 504");
    assert!(resp.header("tollgate-error").is_none());
    assert_eq!(script.count(), 6);

    // A status not in `on` is not retried.
    script.push([status(500), status(200)]);
    let resp = raw(proxy.addr, get(up, "/c").as_bytes()).await;
    assert_eq!(resp.status, 500);
    assert_eq!(script.count(), 7);
}

#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key_and_replayed_identically() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(FAST_RETRY)).await;

    script.push([status(503), status(200)]);
    let post = format!(
        "POST http://{up}/charge HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let resp = raw(proxy.addr, post.as_bytes()).await;
    assert_eq!(resp.status, 503, "POST without a key is not retried");
    assert_eq!(script.count(), 1);
    script.steps.lock().unwrap().clear();

    // With Idempotency-Key and a chunked body of every byte value: replayed byte for byte.
    let payload: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let mut req = format!(
        "POST http://{up}/charge HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for part in payload.chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    script.push([status(502), Step::Reset, status(200)]);
    let resp = raw(proxy.addr, &req).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let got = script.got();
    assert_eq!(got.len(), 4);
    for g in &got[1..] {
        assert_eq!(g.method, "POST");
        assert!(g.headers.contains("idempotency-key: k-1"));
        assert_eq!(g.body, payload, "every attempt carries the same bytes");
    }
    let lines = proxy.wait_log(2).await;
    assert_eq!(lines[1]["attempts"], 3);
    assert_eq!(lines[1]["bytes_in"], 3000, "client bytes are counted once");
}

#[tokio::test]
async fn bodies_over_the_replay_bound_are_streamed_and_not_retried() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(
        "    retry: { attempts: 3, backoff: 5ms..20ms, max_replay_body: 1KiB }\n",
    ))
    .await;
    let big = vec![b'x'; 4096];

    // Declared too large by Content-Length.
    script.push([status(503), status(200)]);
    let mut req = format!(
        "PUT http://{up}/blob HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let resp = raw(proxy.addr, &req).await;
    assert_eq!(resp.status, 503);
    assert_eq!(script.count(), 1);
    assert_eq!(script.got()[0].body, big);
    script.steps.lock().unwrap().clear();

    // Found too large while reading a chunked body: what was read goes first, then the rest.
    script.push([status(503), status(200)]);
    let mut req = format!(
        "PUT http://{up}/blob HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for part in big.chunks(512) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = raw(proxy.addr, &req).await;
    assert_eq!(resp.status, 503);
    assert_eq!(script.count(), 2);
    assert_eq!(script.got()[1].body, big);

    // A small body under the bound is retried.
    script.steps.lock().unwrap().clear();
    script.push([status(503), status(200)]);
    let req = format!(
        "PUT http://{up}/blob HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(script.count(), 4);
}

#[tokio::test]
async fn retry_after_is_waited_for_unless_above_the_cap() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(
        "    retry: { attempts: 3, backoff: 5ms..20ms, max_retry_after: 3s }\n    provider_backoff: { enabled: false }\n",
    ))
    .await;
    script.push([
        Step::Status(429, vec![("retry-after", "1".into())]),
        status(200),
    ]);
    let resp = raw(proxy.addr, get(up, "/ra").as_bytes()).await;
    assert_eq!(resp.status, 200);
    let got = script.got();
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");

    // Asked to wait longer than max_retry_after: the 429 goes back at once.
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    script.push([Step::Status(429, vec![("retry-after", date)]), status(200)]);
    let resp = raw(proxy.addr, get(up, "/ra").as_bytes()).await;
    assert_eq!(resp.status, 429);
    assert!(
        resp.header("tollgate-error").is_none(),
        "the upstream's own 429"
    );
    assert_eq!(script.count(), 3);
}

#[tokio::test]
async fn budget_stops_a_retry_storm() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(
        "    retry: { attempts: 3, backoff: 1ms..2ms, budget: 0%, budget_min_per_second: 1 }\n",
    ))
    .await;
    script.push((0..200).map(|_| status(503)));
    for _ in 0..20 {
        let resp = raw(proxy.addr, get(up, "/down").as_bytes()).await;
        assert_eq!(resp.status, 503);
    }
    // 1 retry/s over the 10 s window: 10 retries in all, then every request is tried once.
    assert_eq!(script.count(), 20 + 10);
    assert_eq!(
        metric(
            &proxy,
            "tollgate_retry_budget_exhausted_total{api=\"flaky\"} "
        ),
        Some(15)
    );
}

#[tokio::test]
async fn breaker_opens_answers_fast_then_closes_after_a_probe() {
    let (up, script) = scripted_upstream().await;
    let yaml = config(
        "    breaker: { consecutive_failures: 3, open_for: 1s }\n    limits: [{ name: hourly, requests: 100, per: 1h, algorithm: gcra }]\n",
    );
    let proxy = Proxy::start(&yaml).await;
    script.push([status(500), status(502), Step::Reset]);
    for want in [500, 502, 502] {
        let resp = raw(proxy.addr, get(up, "/x").as_bytes()).await;
        assert_eq!(resp.status, want);
    }
    assert_eq!(
        metric(&proxy, "tollgate_breaker_state{api=\"flaky\"} "),
        Some(2)
    );

    // A reload with the same settings keeps the breaker open.
    let gw = &proxy.gateway;
    let cfg = tollgate_config::load_str(
        &format!("network_guard: {{ allow: [\"127.0.0.1/32\"] }}\n{yaml}"),
        "again.yaml",
    )
    .unwrap()
    .config;
    let next = Active::build(
        Policy::compile(Arc::new(cfg), 2).unwrap(),
        &[proxy.addr],
        Some(&gw.active.load_full()),
    )
    .unwrap();
    gw.active.store(Arc::new(next));

    for _ in 0..3 {
        let resp = raw(proxy.addr, get(up, "/x").as_bytes()).await;
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header("tollgate-error"), Some("circuit_open"));
        assert_eq!(resp.header("retry-after"), Some("1"));
        assert_eq!(resp.json()["code"], "circuit_open");
    }
    assert_eq!(script.count(), 3, "nothing reached the upstream while open");
    let shown = proxy.gateway.resilience.status("flaky").unwrap();
    assert_eq!(shown["breaker"]["state"], "open");
    assert!(shown["breaker"]["open_for_ms"].as_u64().unwrap() <= 1000);
    assert!(shown["provider_backoff_ms"].is_null());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    script.push([status(200)]);
    let resp = raw(proxy.addr, get(up, "/x").as_bytes()).await;
    assert_eq!(resp.status, 200, "the half-open probe");
    // Refusals charged no rate-limit quota: 3 failures + the probe = 4 admitted.
    assert!(
        resp.header("ratelimit")
            .unwrap()
            .starts_with("\"hourly\";r=96;"),
        "{:?}",
        resp.header("ratelimit")
    );
    let resp = raw(proxy.addr, get(up, "/x").as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        metric(&proxy, "tollgate_breaker_state{api=\"flaky\"} "),
        Some(0)
    );
    let lines = proxy.wait_log(8).await;
    assert_eq!(lines[3]["reason"], "circuit_open");
    assert_eq!(lines[3]["decision"], "deny");
    assert_eq!(lines[3]["attempts"], 0);
}

#[tokio::test]
async fn provider_backoff_answers_locally_until_the_reset() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config("")).await;
    script.push([Step::Status(
        200,
        vec![
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", "1".into()),
        ],
    )]);
    let resp = raw(proxy.addr, get(up, "/q").as_bytes()).await;
    assert_eq!(
        resp.status, 200,
        "the response that spent the quota is delivered"
    );
    for _ in 0..3 {
        let resp = raw(proxy.addr, get(up, "/q").as_bytes()).await;
        assert_eq!(resp.status, 429);
        assert_eq!(resp.header("tollgate-error"), Some("provider_backoff"));
        assert_eq!(resp.header("retry-after"), Some("1"));
    }
    assert_eq!(script.count(), 1);
    assert_eq!(
        metric(&proxy, "tollgate_provider_backoff_total{api=\"flaky\"} "),
        Some(1)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = raw(proxy.addr, get(up, "/q").as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(script.count(), 2);

    // A 429 with Retry-After starts one too (IETF RateLimit as well).
    script.push([Step::Status(429, vec![("retry-after", "1".into())])]);
    let resp = raw(proxy.addr, get(up, "/q").as_bytes()).await;
    assert_eq!(resp.status, 429);
    assert!(resp.header("tollgate-error").is_none());
    let resp = raw(proxy.addr, get(up, "/q").as_bytes()).await;
    assert_eq!(resp.header("tollgate-error"), Some("provider_backoff"));
    assert_eq!(script.count(), 3);
}

#[tokio::test]
async fn connection_resets_and_refused_connects_are_retried() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(FAST_RETRY)).await;
    script.push([Step::Reset, status(200)]);
    let resp = raw(proxy.addr, get(up, "/r").as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(script.count(), 2);
    assert_eq!(
        metric(
            &proxy,
            "tollgate_upstream_retries_total{api=\"flaky\",reason=\"reset\"} "
        ),
        Some(1)
    );
    // Nothing listens: every attempt fails to connect, the client gets the gateway's 502.
    let port = harness::closed_port().await;
    let resp = raw(
        proxy.addr,
        get(SocketAddr::from(([127, 0, 0, 1], port)), "/r").as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("tollgate-error"),
        Some("upstream_connect_failed")
    );
    let lines = proxy.wait_log(2).await;
    assert_eq!(lines[1]["attempts"], 3);
}

#[tokio::test]
async fn per_try_timeout_and_deadline_bound_the_loop() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(
        "    retry: { attempts: 3, backoff: 5ms..5ms, per_try_timeout: 300ms, deadline: 10s }\n",
    ))
    .await;
    // The first attempt gets no headers in 300 ms: it is abandoned and the second answers.
    script.push([Step::Slow(Duration::from_secs(3)), status(200)]);
    let resp = raw(proxy.addr, get(up, "/t").as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"answer 200");
    assert_eq!(
        metric(
            &proxy,
            "tollgate_upstream_retries_total{api=\"flaky\",reason=\"timeout\"} "
        ),
        Some(1)
    );
    // Every attempt too slow: the client gets the gateway's 504 after `attempts` tries.
    script.push((0..3).map(|_| Step::Slow(Duration::from_secs(3))));
    let resp = raw(proxy.addr, get(up, "/t").as_bytes()).await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.header("tollgate-error"), Some("upstream_timeout"));
    assert_eq!(script.count(), 5);

    // A wait that would end past the deadline ends the loop with the last answer.
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(
        "    retry: { attempts: 5, backoff: 400ms..400ms, jitter: none, deadline: 600ms }\n",
    ))
    .await;
    script.push((0..5).map(|_| status(503)));
    let resp = raw(proxy.addr, get(up, "/d").as_bytes()).await;
    assert_eq!(resp.status, 503);
    // Sent at 0 ms and about 400 ms; the next would be at about 800 ms, past 600 ms.
    assert_eq!(script.count(), 2);
}

#[tokio::test]
async fn retried_responses_are_drained_so_the_connection_is_reused() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(
        "    retry: { attempts: 3, backoff: 200ms..200ms, jitter: none }\n",
    ))
    .await;
    // Bodies larger than one read: dropping them unread would close the connection.
    script.push([Step::Big(503, 40_000), Step::Big(429, 40_000), status(200)]);
    let resp = raw(proxy.addr, get(up, "/keep").as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(script.count(), 3);
    assert_eq!(
        script.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the discarded 503 and 429 bodies were read, so their connection carried the retries"
    );
}

#[tokio::test]
async fn report_mode_logs_an_open_breaker_but_sends_anyway() {
    let (up, script) = scripted_upstream().await;
    let proxy = Proxy::start(&config(
        "    mode: report\n    breaker: { consecutive_failures: 1, open_for: 1m }\n",
    ))
    .await;
    script.push([status(500), status(200)]);
    assert_eq!(raw(proxy.addr, get(up, "/r").as_bytes()).await.status, 500);
    let resp = raw(proxy.addr, get(up, "/r").as_bytes()).await;
    assert_eq!(resp.status, 200, "report mode does not refuse");
    assert_eq!(script.count(), 2);
    let lines = proxy.wait_log(2).await;
    assert_eq!(lines[1]["decision"], "report");
    assert_eq!(lines[1]["reason"], "circuit_open");
}
